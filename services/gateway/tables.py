"""Keeping the routing table current: filled from the registry at start, then moved on by
the events the registry and the builder publish."""

import logging
from typing import Any
from uuid import UUID

import httpx

from modelcloud_proto.events import (
    CONSUMER_QUEUES,
    Envelope,
    Replica,
    ReplicaRestarted,
    ServiceVisibilityChanged,
    VersionOffline,
    VersionOnline,
)
from modelcloud_proto.specs import Device
from services.gateway.routing import Route, RoutingTable

log = logging.getLogger(__name__)

# One durable queue that every bus declares at start (modelcloud_proto.events), so the
# gateway also gets what was published while it was down. It applies that backlog (in order)
# while it reads the registry: both converge, and applying an event twice changes nothing.
QUEUE = "gateway"
PATTERNS = CONSUMER_QUEUES[QUEUE]


async def load_from_registry(table: RoutingTable, registry: httpx.AsyncClient) -> int:
    """Every online version the gateway's token can see; returns how many."""
    count = 0
    for project in await _get(registry, "/v1/projects"):
        name = project["name"]
        for service in await _get(registry, f"/v1/projects/{name}/services"):
            versions = await _get(
                registry, f"/v1/projects/{name}/services/{service['name']}/versions"
            )
            for version in versions:
                if version["state"] != "online" or version["api_version"] is None:
                    continue
                performance = service.get("performance") or {}
                interface = version.get("interface") or {}
                table.online(
                    Route(
                        project=name,
                        service=service["name"],
                        version_id=UUID(version["id"]),
                        version=version["version"],
                        api_version=int(version["api_version"]),
                        device=Device(performance.get("device", "any")),
                        public=bool(service.get("public")),
                        timeout_s=performance.get("timeout_s"),
                        commands=_commands(interface),
                    ),
                    [Replica.model_validate(r) for r in version["replicas"]],
                )
                count += 1
    return count


def _commands(interface: dict[str, Any]) -> frozenset[str] | None:
    """The command names of a version's interface, as the registry read it at upload."""
    if "commands" not in interface:
        return None  # a registry that does not say: see Route.allows
    return frozenset(str(command["name"]) for command in interface["commands"])


async def _get(client: httpx.AsyncClient, path: str) -> list[dict[str, Any]]:
    answer = await client.get(path)
    answer.raise_for_status()
    body: list[dict[str, Any]] = answer.json()
    return body


def apply(table: RoutingTable, envelope: Envelope) -> None:
    event = envelope.event()
    match event:
        case VersionOnline():
            table.online(
                Route(
                    project=event.project,
                    service=event.service,
                    version_id=event.version_id,
                    version=event.version,
                    api_version=event.api_version,
                    device=event.device,
                    public=event.public,
                    timeout_s=event.timeout_s,
                    commands=None if event.commands is None else frozenset(event.commands),
                ),
                event.replicas,
            )
            log.info("routing %s/%s v%d", event.project, event.service, event.api_version)
        case VersionOffline():
            table.offline(event.version_id)
            log.info("stopped routing %s/%s %s", event.project, event.service, event.version)
        case ServiceVisibilityChanged():
            table.set_public(event.project, event.service, event.public)
            log.info(
                "%s/%s is %s",
                event.project,
                event.service,
                "public" if event.public else "private",
            )
        case ReplicaRestarted():
            table.replica_restarted(event.version_id, event.replica, event.previous_address)
        case _:
            pass
