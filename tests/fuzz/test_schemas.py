"""Schema fuzzing (issue 14): schemathesis reads each service's OpenAPI document, and the
gateway's merged one, and sends requests generated from it, as an admin. Every answer must
be something the document promises: no 5xx, a documented status code, the documented
content type, and every reference in the document resolvable (an operation schemathesis
cannot read fails the test too). Each operation gets valid data and data its document
forbids.

Bounded for CI: a fixed number of examples per operation, derandomized (the same requests
on every run), no shrinking, and the operations that would start real work (a build or a
publish of the real version: a venv and a replica) never get the real names."""

import hashlib
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

from tests.fuzz.conftest import FuzzPlatform

# One process runs them all (pytest-xdist), on the one platform the fixture starts there.
pytestmark = [pytest.mark.timeout(300), pytest.mark.xdist_group("fuzz-platform")]
# Per operation and generation mode. The gateway's document holds the services' routes
# again (fuzzed through the front door) and its own: fewer there.
EXAMPLES = {"registry": 8, "builder": 8, "filestore": 8, "metrics": 8, "gateway": 3}
# Not response_schema_conformance yet: every timestamp read back from SQLite is naive
# ("2026-12-03T17:56:46.307998", no offset), which is no RFC 3339 "date-time" as the
# documents promise; once the read models give UTC offsets, add it here.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance]
# Never aimed at the real objects: real work, not a request's worth (a build, a replica), or
# an answer that does not end (the runs' live events).
NOT_AIMED = ("/build", "/publish", "/live")
# Upload packs are tar files: sent as the bytes generated (nearly never a tar, which the
# file store must refuse with a 4xx).
schemathesis.serializer.alias("application/x-tar", "application/octet-stream")


def _aim_at_real_objects(case: Any, real: dict[str, str]) -> None:
    """Every other generated case (chosen by a hash of the case, so the same ones on every
    run) gets the real objects' names in its path: the fuzzer's own strings nearly never
    name anything that exists, so the code past the 404 would go untested."""
    # A declared Content-Length (the file upload's) is the transport's: a generated one
    # that disagrees with the body is refused by the HTTP server before any route runs.
    for name in [n for n in case.headers or {} if n.lower() == "content-length"]:
        del case.headers[name]
    if case.operation.path.endswith(NOT_AIMED) or not case.path_parameters:
        return
    if hashlib.sha256(repr(case.path_parameters).encode()).digest()[0] % 2:
        return
    for name in case.path_parameters:
        if name in real:
            case.path_parameters[name] = real[name]


def _fuzz(platform: FuzzPlatform, service: str, case: Any, session: requests.Session) -> None:
    _aim_at_real_objects(case, platform.real)
    answer = case.call(
        base_url=platform.urls[service], headers=platform.headers, session=session, timeout=10
    )
    case.validate_response(answer, checks=CHECKS, headers=platform.headers)


@pytest.fixture(scope="session")
def session() -> Iterator[requests.Session]:
    with requests.Session() as opened:
        yield opened


def _bounded(examples: int) -> hypothesis.settings:
    return hypothesis.settings(
        max_examples=examples,
        derandomize=True,  # the same requests on every run: a CI failure is reproducible
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure shows as found
        suppress_health_check=list(HealthCheck),
    )


def fuzz_document(
    platform: FuzzPlatform, service: str, session: requests.Session
) -> tuple[int, list[str]]:
    """How many operations of ``service``'s document were fuzzed, and what went wrong: one
    line per operation and generation mode (valid data, and data the document forbids)."""
    schema = schemathesis.openapi.from_url(
        f"{platform.urls[service]}/openapi.json", headers=platform.headers
    )
    found = []
    fuzzed = 0
    bounded = _bounded(EXAMPLES[service])
    for result in schema.get_all_operations():
        if isinstance(result, Err):  # a reference that does not resolve, say
            found.append(f"unreadable: {result.err()}")
            continue
        operation = result.ok()
        fuzzed += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            @bounded
            def fuzz(case: Any) -> None:
                _fuzz(platform, service, case, session)

            try:
                fuzz()
            except Unsatisfiable:  # nothing to get wrong: no parameter, no body
                pass
            except FailureGroup as failures:  # the checks' findings, with a curl line
                found.append(f"{operation.label} [{mode.value}]: {failures.message[:2000]}")
            except Exception as error:
                found.append(f"{operation.label} [{mode.value}]: {error!r}"[:2000])
    return fuzzed, found


@pytest.mark.parametrize("service", list(EXAMPLES))
def test_every_answer_is_documented(
    fuzz_platform: FuzzPlatform, service: str, session: requests.Session
) -> None:
    fuzzed, failures = fuzz_document(fuzz_platform, service, session)
    assert fuzzed > 0, f"{service}'s document lists no operation: nothing was fuzzed"
    assert not failures, f"{len(failures)} failures:\n" + "\n\n".join(failures)
