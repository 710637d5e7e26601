"""The OpenAPI 3.1 document of a model service, generated from its declared data types."""

from collections.abc import Mapping
from typing import Any

from modelcloud._model import Command, Model
from modelcloud.data_types import DataType
from modelcloud.version import __version__
from modelcloud_proto.problem import PROBLEM_MEDIA_TYPE, Problem

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def openapi_document(model: Model, title: str = "cloud_model") -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/healthz": {
            "get": {
                "summary": "Ready once setup has finished",
                "operationId": "healthz",
                "responses": {
                    "200": _json_response("Ready", _HEALTH),
                    "503": _json_response("Not ready yet, or setup failed", _HEALTH),
                },
            }
        },
        "/meta": {
            "get": {
                "summary": "The model's manifest: commands, inputs, outputs, setup options",
                "operationId": "meta",
                "responses": {"200": _json_response("The manifest", {"type": "object"})},
            }
        },
        "/setup": {
            "post": {
                "summary": "Run setup again with new options",
                "operationId": "setup",
                "requestBody": _request_body(model.setup_options),
                "responses": {
                    "200": _json_response("Setup finished", _HEALTH),
                    **_problem_responses(),
                },
            }
        },
    }
    schemas: dict[str, Any] = {"Problem": Problem.model_json_schema()}
    for command in model.commands.values():
        paths[f"/{command.name}"] = {"post": _operation(command, schemas)}
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": __version__},
        "paths": paths,
        "components": {"schemas": schemas},
    }


_HEALTH = {
    "type": "object",
    "properties": {"status": {"type": "string"}, "detail": {"type": "string"}},
    "required": ["status"],
}


def _operation(command: Command, schemas: dict[str, Any]) -> dict[str, Any]:
    base = "".join(part.capitalize() for part in command.name.replace("-", "_").split("_"))
    schemas[f"{base}Output"] = _object_schema(command.outputs)
    operation: dict[str, Any] = {
        "summary": command.description or f"Run {command.name}",
        "operationId": command.name,
        "requestBody": _request_body(command.inputs, schemas, f"{base}Input"),
        "responses": {
            "200": _json_response("The outputs", {"$ref": f"#/components/schemas/{base}Output"}),
            **_problem_responses(),
        },
    }
    return operation


def _request_body(
    fields: Mapping[str, DataType],
    schemas: dict[str, Any] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    json_schema = _object_schema(fields)
    if schemas is not None and name is not None:
        schemas[name] = json_schema
        json_schema = {"$ref": f"#/components/schemas/{name}"}
    return {
        "required": any(t.required for t in fields.values()),
        "content": {
            "application/json": {"schema": json_schema},
            "multipart/form-data": {"schema": _object_schema(fields, multipart=True)},
        },
    }


def _object_schema(fields: Mapping[str, DataType], *, multipart: bool = False) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {n: t.json_schema(multipart=multipart) for n, t in fields.items()},
        "required": [n for n, t in fields.items() if t.required],
        "additionalProperties": False,
    }


def _json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _problem_responses() -> dict[str, Any]:
    described = {
        "400": "The body is not JSON or form data",
        "413": "The body is larger than the server accepts",
        "415": "Neither JSON nor multipart form data",
        "422": "An input is invalid; `errors` names each field",
        "500": "The model failed",
        "503": "The model is not ready",
    }
    return {
        status: {"description": text, "content": {PROBLEM_MEDIA_TYPE: {"schema": _PROBLEM_REF}}}
        for status, text in described.items()
    }
