"""Two promises each service's OpenAPI document (and the gateway's merged one) makes to a
client, checked over every operation in it: every ``$ref`` resolves, and a call with no
token to an operation that needs one is answered 401 before anything about its path, query
or body is validated."""

import re
from typing import Any

import httpx
import pytest

from modelcloud_proto.problem import PROBLEM_MEDIA_TYPE
from tests.fuzz.conftest import SERVICES, FuzzPlatform

# One process runs them all (pytest-xdist), on the one platform the fixture starts there.
pytestmark = [pytest.mark.timeout(120), pytest.mark.xdist_group("fuzz-platform")]
# Answered with no token, on purpose: the runs page and its assets, the transfer limits;
# at the gateway, the model calls (a public model takes anonymous calls).
PUBLIC = re.compile(r"/v1/transfers|/v1/projects/\{project\}/runs/(dashboard|assets/\{name\})")
METHODS = ("get", "put", "post", "patch", "delete")


def _document(platform: FuzzPlatform, service: str) -> dict[str, Any]:
    answer = httpx.get(f"{platform.urls[service]}/openapi.json", headers=platform.headers)
    assert answer.status_code == 200, answer.text
    document: dict[str, Any] = answer.json()
    return document


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in _refs(item)]
    return []


def _resolves(document: dict[str, Any], ref: str) -> bool:
    if not ref.startswith("#/"):
        return False
    node: Any = document
    for part in ref[2:].split("/"):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.parametrize("service", SERVICES)
def test_every_reference_resolves(fuzz_platform: FuzzPlatform, service: str) -> None:
    document = _document(fuzz_platform, service)
    refs = _refs(document)
    assert refs  # the problem documents and the request models, at least
    assert [ref for ref in refs if not _resolves(document, ref)] == []


def _invalid_path(template: str) -> str:
    # Every parameter given a value no route validates: a 422 if validation came first.
    return re.sub(r"\{[^}]+\}", "%01bad", template)


@pytest.mark.parametrize("service", SERVICES)
def test_no_token_is_401_before_any_validation(fuzz_platform: FuzzPlatform, service: str) -> None:
    document = _document(fuzz_platform, service)
    wrong = []
    checked = 0
    with httpx.Client(base_url=fuzz_platform.urls[service], timeout=30) as anonymous:
        for template, item in document["paths"].items():
            if PUBLIC.fullmatch(template) or template.startswith("/models/"):
                continue
            for method in METHODS:
                if method not in item:
                    continue
                checked += 1
                for headers in ({}, {"Authorization": "Bearer"}):
                    answer = anonymous.request(
                        method.upper(),
                        _invalid_path(template),
                        content=b"{not json" if method != "get" else None,
                        headers={"Content-Type": "application/json", **headers},
                    )
                    problem = answer.headers.get("content-type", "").startswith(PROBLEM_MEDIA_TYPE)
                    if answer.status_code != 401 or not problem:
                        wrong.append(f"{method.upper()} {template}: {answer.status_code}")
    assert checked > 0
    assert wrong == []
