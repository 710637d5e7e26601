"""Which replica takes a call: the pool by the declared device, the least busy inside it,
a bound instead of a queue, and a resting period for a replica that refused."""

from uuid import uuid4

import pytest

from modelcloud_proto.events import Replica
from modelcloud_proto.specs import Device
from services.gateway.routing import AllBusy, Route, RoutingTable


def route(device: Device, *pools: Device) -> tuple[RoutingTable, Route]:
    table = RoutingTable(max_outstanding=2, eject_s=60)
    found = Route("vision", "greeter", uuid4(), "1.0", 1, device, public=False)
    replicas = [Replica(address=f"127.0.0.1:{9000 + i}", pool=p) for i, p in enumerate(pools)]
    table.online(found, replicas)
    return table, found


def test_gpu_services_use_gpu_replicas_only() -> None:
    table, found = route(Device.GPU, Device.CPU, Device.GPU)
    assert table.pick(found).pool is Device.GPU
    table, found = route(Device.GPU, Device.CPU)
    with pytest.raises(AllBusy):
        table.pick(found)


def test_any_prefers_the_gpu_pool_until_it_is_saturated() -> None:
    table, found = route(Device.ANY, Device.CPU, Device.GPU)
    gpu = table.pick(found)
    assert gpu.pool is Device.GPU
    gpu.outstanding = 2  # at the bound
    assert table.pick(found).pool is Device.CPU


def test_least_outstanding_wins_and_a_full_pool_answers_busy() -> None:
    table, found = route(Device.CPU, Device.CPU, Device.CPU)
    first, second = found.backends
    first.outstanding = 1
    assert table.pick(found) is second
    first.outstanding = second.outstanding = 2
    with pytest.raises(AllBusy):
        table.pick(found)


def test_a_refusing_replica_rests_and_a_restart_brings_it_back() -> None:
    table, found = route(Device.CPU, Device.CPU, Device.CPU)
    first, second = found.backends
    table.eject(first)
    assert {table.pick(found).address for _ in range(3)} == {second.address}
    table.replica_restarted(found.version_id, Replica(address=first.address, pool=Device.CPU))
    first_again = table.pick(found, exclude={second.address})
    assert first_again is first


def test_newest_version_and_offline() -> None:
    table, first = route(Device.CPU, Device.CPU)
    second = Route("vision", "greeter", uuid4(), "1.1", 2, Device.CPU, public=False)
    table.online(second, [Replica(address="127.0.0.1:9100", pool=Device.CPU)])
    assert table.find("vision", "greeter", None) is second
    assert table.find("vision", "greeter", 1) is first
    table.offline(first.version_id)
    assert table.find("vision", "greeter", 1) is None
    assert table.api_versions("vision", "greeter") == [2]


def test_a_replica_restarted_on_another_port_replaces_the_old_address() -> None:
    table, found = route(Device.CPU, Device.CPU)
    (old,) = found.backends
    moved = Replica(address="127.0.0.1:9555", pool=Device.CPU)
    table.replica_restarted(found.version_id, moved, previous_address=old.address)
    assert [b.address for b in found.backends] == ["127.0.0.1:9555"]


async def test_an_ejected_replica_is_probed_back_once_it_answers() -> None:
    import asyncio
    import socket

    import aiohttp

    from services.gateway.probes import probe_once

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    table = RoutingTable(max_outstanding=2, eject_s=60)
    found = Route("vision", "greeter", uuid4(), "1.0", 1, Device.CPU, public=False)
    table.online(found, [Replica(address=f"127.0.0.1:{port}", pool=Device.CPU)])
    (backend,) = found.backends
    table.eject(backend)

    async def healthz(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    async with aiohttp.ClientSession() as session:
        await probe_once(table, session)  # nothing listens: it rests on
        assert table.ejected() == [backend]
        with pytest.raises(AllBusy):
            table.pick(found)
        server = await asyncio.start_server(healthz, "127.0.0.1", port)
        async with server:
            await probe_once(table, session)
        assert table.ejected() == []
        assert table.pick(found) is backend


@pytest.mark.parametrize(
    ("header", "patterns", "ok"),
    [
        ("127.0.0.1:8000", ["localhost", "127.0.0.1"], True),
        ("[::1]:8000", ["::1"], True),
        ("LOCALHOST", ["localhost"], True),
        ("api.example.com", ["*.example.com"], True),
        ("example.com", ["*.example.com"], True),
        ("badexample.com", ["*.example.com"], False),
        ("evil.example:80", ["localhost", "127.0.0.1"], False),
        ("", ["localhost"], False),
        ("anything", ["*"], True),
    ],
)
def test_host_names_the_gateway_answers_for(header: str, patterns: list[str], ok: bool) -> None:
    from services.gateway.hosts import allowed, host_name

    assert allowed(host_name(header), patterns) is ok
