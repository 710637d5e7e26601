"""Bad input (issue 14), sent as a client would to every service and through the gateway:
path parameters with control characters, NUL, overlong UTF-8 and 10k-character names; JSON
nested 10k deep, with duplicate keys or with numbers past 64 bits; 64 KB headers. Each one
gets a 4xx problem document, never a 500 or a traceback, and nothing is stored."""

import json

import httpx
import pytest

from modelcloud_proto.problem import PROBLEM_MEDIA_TYPE
from tests.fuzz.conftest import FuzzPlatform

# One process runs them all (pytest-xdist), on the one platform the fixture starts there.
pytestmark = [pytest.mark.timeout(120), pytest.mark.xdist_group("fuzz-platform")]
LONG = "a" * 10_000
# Percent-encoded as a client must send them; the server decodes them into the parameter.
BAD_SEGMENTS = {
    "control character": "ab%01cd",
    "NUL": "ab%00cd",
    "overlong UTF-8 '/'": "ab%C0%AFcd",
    "lone continuation byte": "ab%80cd",
    "10k characters": LONG,
    # The real project's name and more: forwarded decoded, the '#' ended the path there
    # and the gateway answered for project "fuzz" itself.
    "'#' after a real name": "fuzz%23x",
}
# One read per service, each with a name in its path.
READS = {
    "registry": "/v1/projects/{x}/services",
    "builder": "/v1/projects/{x}/builds",
    "filestore": "/v1/projects/{x}/models",
    "metrics": "/v1/projects/{x}/runs",
}


def assert_problem(answer: httpx.Response, *statuses: int) -> dict[str, object]:
    """A 4xx problem document (one of ``statuses`` when given), with nothing of a
    traceback in it."""
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:500])
    if statuses:
        assert answer.status_code in statuses, (answer.status_code, answer.text[:500])
    assert answer.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE), answer.headers
    assert "Traceback" not in answer.text
    assert 'File "' not in answer.text
    problem: dict[str, object] = answer.json()
    assert problem["status"] == answer.status_code
    return problem


def client(platform: FuzzPlatform, service: str) -> httpx.Client:
    return httpx.Client(base_url=platform.urls[service], headers=platform.headers, timeout=30)


@pytest.mark.parametrize("service", [*READS, "gateway"])
@pytest.mark.parametrize("segment", list(BAD_SEGMENTS.values()), ids=list(BAD_SEGMENTS))
def test_bad_path_parameters_are_4xx_problems(
    fuzz_platform: FuzzPlatform, service: str, segment: str
) -> None:
    paths = READS.values() if service == "gateway" else [READS[service]]
    with client(fuzz_platform, service) as http:
        for path in paths:
            assert_problem(http.get(path.format(x=segment)), 404, 422)


@pytest.mark.parametrize("segment", list(BAD_SEGMENTS.values()), ids=list(BAD_SEGMENTS))
def test_bad_names_in_model_calls_are_4xx_problems(
    fuzz_platform: FuzzPlatform, segment: str
) -> None:
    with client(fuzz_platform, "gateway") as http:
        assert_problem(http.post(f"/models/{segment}/echo/v1/greet", json={}), 404, 422)
        assert_problem(http.post(f"/models/fuzz/{segment}/greet", json={}), 404, 422)


def _projects(http: httpx.Client) -> list[str]:
    return sorted(p["name"] for p in http.get("/v1/projects").json())


@pytest.mark.parametrize("service", ["registry", "gateway"])
def test_a_bad_name_in_a_body_stores_nothing(fuzz_platform: FuzzPlatform, service: str) -> None:
    with client(fuzz_platform, service) as http:
        before = _projects(http)
        for name in ["ab\x00cd", "ab\x01cd", LONG, "ab\u202ecd"]:
            problem = assert_problem(http.post("/v1/projects", json={"name": name}), 422)
            assert "name" in json.dumps(problem["errors"])  # the field is named
        assert _projects(http) == before


def _deep(depth: int) -> bytes:
    return b'{"name": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize("service", ["registry", "metrics", "gateway"])
def test_json_nested_10k_deep_is_a_4xx_problem(fuzz_platform: FuzzPlatform, service: str) -> None:
    path = "/v1/projects/fuzz/runs" if service == "metrics" else "/v1/projects"
    headers = {"Content-Type": "application/json"}
    with client(fuzz_platform, service) as http:
        before = _projects(http) if service != "metrics" else None
        assert_problem(http.post(path, content=_deep(10_000), headers=headers), 400, 422)
        if before is not None:
            assert _projects(http) == before


def test_duplicate_keys_take_one_value_and_store_one_object(fuzz_platform: FuzzPlatform) -> None:
    """Duplicate keys are read the way Python's and most parsers read them: the last wins.
    What matters is that the answer says what was stored and that one object is stored."""
    body = b'{"name": "dup-a", "name": "dup-b", "type": "cv"}'
    with client(fuzz_platform, "gateway") as http:
        answer = http.post(
            "/v1/projects", content=body, headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 201, answer.text
        assert answer.json()["name"] == "dup-b"
        assert [p for p in _projects(http) if p.startswith("dup-")] == ["dup-b"]


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**400])
def test_numbers_beyond_64_bits_are_4xx_problems(fuzz_platform: FuzzPlatform, number: int) -> None:
    with client(fuzz_platform, "gateway") as http:
        runs = http.get("/v1/projects/fuzz/runs").json()
        run = runs[0]["id"]
        raw = str(number).encode()
        json_headers = {"Content-Type": "application/json"}
        for path, body in [
            ("/v1/projects/fuzz/runs", b'{"name": "big", "params": {"n": ' + raw + b"}}"),
            (f"/v1/projects/fuzz/runs/{run}/params", b'{"n": ' + raw + b"}"),
            (
                f"/v1/projects/fuzz/runs/{run}/metrics",
                b'{"points": [{"key": "loss", "step": ' + raw + b', "value": 1}]}',
            ),
            (
                "/v1/projects/fuzz/services",
                b'{"name": "big", "group": "default", "port": ' + raw + b"}",
            ),
        ]:
            assert_problem(http.post(path, content=body, headers=json_headers), 422)
        assert [r["id"] for r in http.get("/v1/projects/fuzz/runs").json()] == [
            r["id"] for r in runs
        ]
        assert "n" not in http.get(f"/v1/projects/fuzz/runs/{run}").json()["params"]


@pytest.mark.parametrize("service", [*READS, "gateway"])
def test_64_kb_headers_are_refused_with_a_problem(
    fuzz_platform: FuzzPlatform, service: str
) -> None:
    path = READS.get(service, READS["registry"]).format(x="fuzz")
    with client(fuzz_platform, service) as http:
        assert http.get(path).status_code == 200  # the same request, headers of a usual size
        assert_problem(http.get(path, headers={"X-Padding": "a" * 65_536}), 431)
