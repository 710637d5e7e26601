"""JSON Schema export of every event, generated from the classes in :mod:`events`.

``python -m modelcloud_proto.schema > proto/schema/events.schema.json`` writes the committed
copy; a test keeps it equal to what the code generates.
"""

import json
from typing import Any

from pydantic import TypeAdapter

from modelcloud_proto.events import EVENT_TYPES, Envelope


def events_schema() -> dict[str, Any]:
    defs: dict[str, Any] = {}
    events: dict[str, Any] = {}
    for event_type, cls in sorted(EVENT_TYPES.items()):
        schema = TypeAdapter(cls).json_schema(ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        defs[cls.__name__] = schema
        events[event_type] = {"version": cls.VERSION, "data": {"$ref": f"#/$defs/{cls.__name__}"}}
    envelope = Envelope.model_json_schema(ref_template="#/$defs/{model}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "ModelCloud events",
        "description": "Envelope and payload of every event; `events` maps type to payload.",
        "envelope": envelope,
        "events": events,
        "$defs": defs,
    }


def main() -> None:
    print(json.dumps(events_schema(), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
