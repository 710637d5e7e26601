"""Bringing ejected replicas back: each resting replica's ``/healthz`` is asked every
``interval_s``; one that answers 200 takes calls again at once, one that does not rests on.

Calls never wait for a probe: a refused call is retried on another replica
(:mod:`services.gateway.calls`), and the builder restarts replicas that died; the probes only
decide when a replica that refused is worth sending calls to again.
"""

import asyncio
import logging

import aiohttp

from modelcloud_proto.replica_keys import REPLICA_KEY_HEADER
from services.gateway.routing import Backend, RoutingTable

log = logging.getLogger(__name__)
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=1)


async def healthy(session: aiohttp.ClientSession, backend: Backend) -> bool:
    # The key goes with the probe too: the SDK's /healthz answers without one (the builder's
    # checks need none), but a model server that asks it of every path still lets this in.
    headers = {} if backend.key is None else {REPLICA_KEY_HEADER: backend.key}
    url = f"http://{backend.address}/healthz"
    try:
        async with session.get(url, headers=headers, timeout=PROBE_TIMEOUT) as r:
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def probe_once(table: RoutingTable, session: aiohttp.ClientSession) -> None:
    resting = table.ejected()
    answers = await asyncio.gather(*(healthy(session, b) for b in resting))
    for backend, ok in zip(resting, answers, strict=True):
        if ok:
            table.readmit(backend)
            log.info("replica %s answers its health check again: back in", backend.address)
        else:
            table.eject(backend)


async def probe_ejected(
    table: RoutingTable, session: aiohttp.ClientSession, interval_s: float
) -> None:
    """Run until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        await probe_once(table, session)
