"""Issue 14: a service's visibility changing (``PATCH`` of ``public``) is an event, staged
through the outbox with the change, and only when the visibility really changes."""

import asyncio
import uuid
from collections.abc import Awaitable, Callable

from modelcloud_proto.events import Envelope
from modelcloud_testing.polling import wait_for
from modelcloud_testing.registries import Registry, make_service

SERVICE = "/v1/projects/vision/services/classifier"


async def test_turning_a_service_private_or_public_sends_one_event_each(
    registry: Registry,
) -> None:
    created = await make_service(registry.client)
    seen: list[Envelope] = []
    turned_private = asyncio.Event()  # the last change: every event before it has arrived

    async def record(envelope: Envelope) -> None:
        seen.append(envelope)
        if envelope.data["public"] is False:
            turned_private.set()

    queue = f"test-{uuid.uuid4().hex[:8]}"
    await registry.bus.subscribe(queue, ["registry.service.visibility_changed"], record)

    async def patch(**changes: object) -> None:
        answer = await registry.client.patch(SERVICE, json=changes)
        assert answer.status_code == 200, answer.text

    await patch(public=True)
    await patch(tagline="no visibility change")
    await patch(public=True)  # already public: nothing to tell
    await patch(public=False)
    await asyncio.wait_for(turned_private.wait(), 10)
    # In order, and nothing in between: the tagline and the repeated PATCH sent nothing.
    assert [e.data for e in seen] == [
        {
            "project": "vision",
            "service_id": created["id"],
            "service": "classifier",
            "public": public,
        }
        for public in (True, False)
    ]
    assert {e.producer for e in seen} == {"registry"}


async def test_the_outbox_reports_its_parked_events_on_metrics(registry: Registry) -> None:
    await make_service(registry.client)  # a committed event, so the relay has counted
    metrics = await wait_for(_parked_line(registry))
    assert metrics == "modelcloud_outbox_parked_events 0.0"


def _parked_line(registry: Registry) -> Callable[[], Awaitable[str | None]]:
    async def line() -> str | None:
        text = (await registry.client.get("/metrics")).text
        found = [x for x in text.splitlines() if x.startswith("modelcloud_outbox_parked_events")]
        return found[0] if found else None

    return line
