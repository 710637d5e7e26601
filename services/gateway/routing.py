"""The routing table: which replicas serve each published API version, and which replica
takes the next call.

Fed by ``registry.version.online`` / ``.offline``, ``registry.service.visibility_changed``
and ``builder.replica.restarted``, and filled from the registry at start, so a restarted
gateway routes at once. Applying an event twice changes nothing, so the table needs no
processed-event bookkeeping.

Choice of replica: the service's declared device picks the pool (``gpu`` -> gpu replicas,
``cpu`` -> cpu replicas, ``any`` -> gpu replicas first, cpu ones when there are none or all
are busy); inside a pool the replica with the fewest calls in flight wins. A replica that
refused a connection is ejected: it rests, and :mod:`services.gateway.probes` asks its
``/healthz`` until it answers, then puts it back (a rest lasts ``eject_s`` per failed probe).

Each route also holds what may be called on it (the commands its version declares) and the
key its replicas ask of callers (:mod:`modelcloud_proto.replica_keys`), derived here from
the secret the gateway shares with the builder.
"""

import time
from collections.abc import Collection
from dataclasses import dataclass, field
from uuid import UUID

from modelcloud_proto.events import Replica
from modelcloud_proto.replica_keys import version_key
from modelcloud_proto.specs import Device


@dataclass
class Backend:
    address: str
    pool: Device
    key: str | None = None  # what its replica asks of callers, when the platform sets one
    outstanding: int = 0
    ejected_until: float = 0.0

    def available(self, now: float) -> bool:
        return self.ejected_until <= now


@dataclass
class Route:
    project: str
    service: str
    version_id: UUID
    version: str
    api_version: int
    device: Device
    public: bool
    timeout_s: float | None = None  # the service's own bound on a call, if it declared one
    # The commands its version declares; None when the registry did not say (an older one).
    commands: frozenset[str] | None = None
    backends: list[Backend] = field(default_factory=list)
    key: str | None = None  # set by the table

    def allows(self, method: str, path: str) -> bool:
        """Whether the gateway forwards ``method /path`` to this version's replicas."""
        if method == "GET":
            return path in READS
        if method != "POST":
            return False
        if self.commands is None:
            return bool(path) and "/" not in path and path not in READS | _SERVER_ONLY
        return path in self.commands


# What a caller may read of a model server besides its commands; ``POST /setup`` is the
# server's own and never forwarded (see :mod:`services.gateway.calls`).
READS = frozenset({"meta", "healthz", "openapi.json"})
_SERVER_ONLY = frozenset({"setup"})


class AllBusy(Exception):
    """Every replica that could take the call is at its bound (or resting)."""


class RoutingTable:
    def __init__(
        self, *, max_outstanding: int, eject_s: float, replica_key: str | None = None
    ) -> None:
        self.max_outstanding = max_outstanding
        self.eject_s = eject_s
        self._replica_key = replica_key
        self._routes: dict[tuple[str, str], dict[int, Route]] = {}

    # ------------------------------------------------------------------ updates

    def online(self, route: Route, replicas: list[Replica]) -> None:
        if self._replica_key is not None:
            route.key = version_key(self._replica_key, route.version_id)
        route.backends = [Backend(r.address, r.pool, route.key) for r in replicas]
        versions = self._routes.setdefault((route.project, route.service), {})
        for api_version, known in list(versions.items()):
            if known.version_id == route.version_id and api_version != route.api_version:
                del versions[api_version]
        versions[route.api_version] = route

    def offline(self, version_id: UUID) -> None:
        for versions in self._routes.values():
            for api_version, route in list(versions.items()):
                if route.version_id == version_id:
                    del versions[api_version]

    def set_public(self, project: str, service: str, public: bool) -> None:
        """Every routed version of the service: public (any valid token calls it) or
        private (the project's readers only), from the next call on."""
        for route in self._routes.get((project, service), {}).values():
            route.public = public

    def replica_restarted(
        self, version_id: UUID, replica: Replica, previous_address: str | None = None
    ) -> None:
        for versions in self._routes.values():
            for route in versions.values():
                if route.version_id != version_id:
                    continue
                kept = [b for b in route.backends if b.address != previous_address]
                for backend in kept:
                    if backend.address == replica.address:
                        backend.pool = replica.pool
                        backend.ejected_until = 0.0
                if all(b.address != replica.address for b in kept):
                    kept.append(Backend(replica.address, replica.pool, route.key))
                route.backends = kept

    # ------------------------------------------------------------------ lookups

    def find(self, project: str, service: str, api_version: int | None) -> Route | None:
        """A published API version, or the newest online one when ``api_version`` is None."""
        versions = self._routes.get((project, service), {})
        if api_version is None:
            return versions[max(versions)] if versions else None
        return versions.get(api_version)

    def api_versions(self, project: str, service: str) -> list[int]:
        return sorted(self._routes.get((project, service), {}))

    def pick(self, route: Route, *, exclude: Collection[str] = ()) -> Backend:
        """The replica for the next call; raises :class:`AllBusy`."""
        now = time.monotonic()
        usable = [b for b in route.backends if b.available(now) and b.address not in exclude]
        pools = {
            Device.GPU: [Device.GPU],
            Device.CPU: [Device.CPU],
            Device.ANY: [Device.GPU, Device.CPU],
        }[route.device]
        for pool in pools:
            candidates = [b for b in usable if b.pool == pool]
            if not candidates:
                continue
            best = min(candidates, key=lambda b: b.outstanding)
            if best.outstanding < self.max_outstanding:
                return best
        raise AllBusy(f"{route.service} v{route.api_version}")

    def eject(self, backend: Backend) -> None:
        backend.ejected_until = time.monotonic() + self.eject_s

    def readmit(self, backend: Backend) -> None:
        backend.ejected_until = 0.0

    def ejected(self) -> list[Backend]:
        """Replicas resting now, each once."""
        now = time.monotonic()
        resting = {
            id(b): b
            for versions in self._routes.values()
            for route in versions.values()
            for b in route.backends
            if not b.available(now)
        }
        return list(resting.values())
