"""The platform's merged OpenAPI document: services' paths side by side, shared schemas
kept once, a name two services use differently kept apart with its references."""

from typing import Any

from services.gateway.openapi import MODEL_CALLS, merge


def part(path: str, schema: dict[str, Any]) -> dict[str, Any]:
    ref = {"$ref": "#/components/schemas/Item"}
    return {
        "paths": {path: {"get": {"responses": {"200": {"content": {"a/b": {"schema": ref}}}}}}},
        "components": {"schemas": {"Item": schema, "Shared": {"type": "string"}}},
        "tags": [{"name": path.strip("/")}],
    }


def test_paths_meet_and_clashing_schema_names_are_kept_apart() -> None:
    own = {"openapi": "3.1.0", "info": {"title": "gateway"}, "paths": {}}
    registry = part("/registry", {"type": "object", "title": "registry item"})
    builder = part("/builder", {"type": "object", "title": "builder item"})
    doc = merge(own, {"registry": registry, "builder": builder, "filestore": None})

    schemas = doc["components"]["schemas"]
    assert schemas["Item"]["title"] == "registry item"
    assert schemas["BuilderItem"]["title"] == "builder item"
    assert set(schemas) == {"Item", "BuilderItem", "Shared"}
    builder_ref = doc["paths"]["/builder"]["get"]["responses"]["200"]["content"]["a/b"]
    assert builder_ref["schema"] == {"$ref": "#/components/schemas/BuilderItem"}
    registry_ref = doc["paths"]["/registry"]["get"]["responses"]["200"]["content"]["a/b"]
    assert registry_ref["schema"] == {"$ref": "#/components/schemas/Item"}
    assert set(MODEL_CALLS) <= set(doc["paths"])
    assert doc["x-modelcloud-unavailable"] == ["filestore"]
    assert [t["name"] for t in doc["tags"]] == ["registry", "builder"]
    assert own["paths"] == {}  # the gateway's own document is left as it was
