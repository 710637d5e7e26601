"""The wire contracts round-trip through JSON unchanged, as both sides rely on."""

from modelcloud_proto import CommandSpec, FieldError, FieldSpec, FieldType, ModelManifest, Problem


def test_manifest_round_trips_with_nested_array_items():
    manifest = ModelManifest(
        sdk_version="1.2.3",
        commands=[
            CommandSpec(
                name="top",
                inputs=[FieldSpec(name="k", type=FieldType.NUMBER, minimum=1, required=False)],
                outputs=[
                    FieldSpec(
                        name="labels",
                        type=FieldType.ARRAY,
                        item=FieldSpec(name="item", type=FieldType.TEXT),
                    )
                ],
            )
        ],
    )
    again = ModelManifest.model_validate_json(manifest.model_dump_json())
    assert again == manifest
    assert again.commands[0].outputs[0].item is not None
    assert again.commands[0].outputs[0].item.type is FieldType.TEXT


def test_problem_keeps_extension_members():
    problem = Problem.model_validate(
        {"type": "urn:x", "title": "T", "status": 422, "retry_after": 3, "errors": []}
    )
    assert problem.model_dump()["retry_after"] == 3
    assert (
        Problem(title="t", status=400, errors=[FieldError(field="a", message="b")]).errors[0].field
        == "a"
    )


def test_committed_event_schema_is_generated_from_the_code():
    import json
    from pathlib import Path

    from modelcloud_proto.schema import events_schema

    committed = Path(__file__).resolve().parents[1] / "schema" / "events.schema.json"
    assert json.loads(committed.read_text()) == events_schema(), (
        "run: python -m modelcloud_proto.schema > proto/schema/events.schema.json"
    )
    assert "registry.build.requested" in events_schema()["events"]
