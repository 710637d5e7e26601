"""One OpenAPI document for the whole platform at the gateway's ``/openapi.json`` (and its
``/docs``): the documents of the services behind the front door, merged, plus the model
call URLs. Each service keeps its own document; a client generator pointed at the gateway
gets every API under one origin.

Schemas with the same name and the same content are shared; a name two services use for
different schemas is prefixed with the service's name in the second one. A service that
cannot be reached is listed under ``x-modelcloud-unavailable`` instead of failing the whole
document; the merge is kept for ``CACHE_S`` seconds.
"""

import copy
import json
import time
from collections.abc import Mapping
from typing import Any

import httpx

from services.common.problems import problem_responses

CACHE_S = 30.0
# What a model call may answer besides the model's own outputs.
_CALL_PROBLEMS = problem_responses(
    {
        400: "A body that is not JSON",
        401: "A private model called with no token, or an invalid one",
        403: "The token may not call this model",
        404: "No such version online, or it declares no such command",
        413: "A body over the gateway's limit",
        422: "The model refused its inputs",
        502: "The model answered wrongly or vanished",
        503: "Every replica is busy (Retry-After) or none is ready",
        504: "The model took longer than the service's timeout",
    }
)
_CALL_RESPONSES = {
    "200": {"description": "The command's outputs", "content": {"application/json": {}}},
    **{str(status): answer for status, answer in _CALL_PROBLEMS.items()},
}
_REF = '"#/components/schemas/{}"'
MODEL_CALLS: dict[str, Any] = {
    "/models/{project}/{service}/v{api_version}/{command}": {
        "post": {
            "tags": ["models"],
            "summary": "Call a published API version of a model",
            "description": "The body and the answer are the model's own (its document is at "
            "`/models/{project}/{service}/v{api_version}/openapi.json`). 404 when that "
            "version is not online or does not declare `command` (`setup` is never "
            "callable here), 503 with Retry-After when every replica is busy, 504 past the "
            "service's timeout.",
            "parameters": [
                {"name": n, "in": "path", "required": True, "schema": {"type": t}}
                for n, t in (
                    ("project", "string"),
                    ("service", "string"),
                    ("api_version", "integer"),
                    ("command", "string"),
                )
            ],
            "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
            "responses": _CALL_RESPONSES,
        }
    },
    "/models/{project}/{service}/{command}": {
        "post": {
            "tags": ["models"],
            "summary": "Call the newest online version of a model",
            "parameters": [
                {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                for n in ("project", "service", "command")
            ],
            "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
            "responses": _CALL_RESPONSES,
        }
    },
}


def merge(own: dict[str, Any], parts: Mapping[str, dict[str, Any] | None]) -> dict[str, Any]:
    """The gateway's own document with each service's ``parts[name]`` (None: unreachable)."""
    doc = copy.deepcopy(own)
    paths: dict[str, Any] = doc.setdefault("paths", {})
    components: dict[str, Any] = doc.setdefault("components", {})
    schemas: dict[str, Any] = components.setdefault("schemas", {})
    security: dict[str, Any] = components.setdefault("securitySchemes", {})
    tags: list[dict[str, Any]] = doc.setdefault("tags", [])
    unavailable = []
    for name, part in parts.items():
        if part is None:
            unavailable.append(name)
            continue
        text = json.dumps(part)
        for key, schema in part.get("components", {}).get("schemas", {}).items():
            if key in schemas and schemas[key] != schema:
                text = text.replace(_REF.format(key), _REF.format(f"{name.title()}{key}"))
        renamed: dict[str, Any] = json.loads(text)
        for key, schema in renamed.get("components", {}).get("schemas", {}).items():
            original = part["components"]["schemas"][key]
            target = key if schemas.get(key, original) == original else f"{name.title()}{key}"
            schemas[target] = schema
        security.update(renamed.get("components", {}).get("securitySchemes", {}))
        for path, item in renamed.get("paths", {}).items():
            paths.setdefault(path, item)
        known = {t["name"] for t in tags}
        tags.extend(t for t in renamed.get("tags", []) if t["name"] not in known)
    paths.update(MODEL_CALLS)
    _lift_defs(doc, schemas)
    if unavailable:
        doc["x-modelcloud-unavailable"] = unavailable
    return doc


def _lift_defs(doc: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Moves every ``$defs`` a schema carries (pydantic's, where a model's schema was put in
    a document by hand) into ``components/schemas`` and points its ``#/$defs/X``
    references there: in an OpenAPI document they are read from the document's root, where
    nothing answers them. A name taken by a different schema keeps the one there (the same
    model under the same name, in practice)."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            for key, schema in node.pop("$defs", {}).items():
                schemas.setdefault(key, walk(schema))
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                node["$ref"] = "#/components/schemas/" + ref.removeprefix("#/$defs/")
            for key, value in list(node.items()):  # lifting may add to a dict walked
                node[key] = walk(value)
        elif isinstance(node, list):
            node[:] = [walk(item) for item in node]
        return node

    walk(doc)


class PlatformDocument:
    """The merged document, fetched again at most every ``CACHE_S`` seconds."""

    def __init__(self, upstreams: Mapping[str, httpx.AsyncClient]) -> None:
        self.upstreams = upstreams
        self._cached: tuple[float, dict[str, Any]] | None = None

    async def get(self, own: dict[str, Any]) -> dict[str, Any]:
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < CACHE_S:
            return self._cached[1]
        parts = {name: await _fetch(client) for name, client in self.upstreams.items()}
        doc = merge(own, parts)
        if not doc.get("x-modelcloud-unavailable"):
            self._cached = (now, doc)
        return doc


async def _fetch(client: httpx.AsyncClient) -> dict[str, Any] | None:
    try:
        answer = await client.get("/openapi.json", timeout=5)
    except httpx.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    part: dict[str, Any] = answer.json()
    return part
