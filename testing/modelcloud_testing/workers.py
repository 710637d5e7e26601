"""What keeps the test processes of a parallel run (pytest-xdist) apart, and what they share.

``make pytest`` runs ``--dist loadgroup``: tests go to whichever process is free, except
those given the same ``xdist_group``, which one process runs in turn. ``group_tests`` gives
the groups: the tests on the machine's RabbitMQ broker share its names (the events exchange,
queues named after the service) and some restart it; the Docker tests remove the images of
their repository; each group runs on one process, beside the other; and tests of one
module that share a module-scoped fixture run where it was set up, once.
"""

import os
from pathlib import Path

import pytest


def worker_index() -> int:
    """0 for ``gw0`` (and for a run without xdist), 1 for ``gw1``, ..."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name.removeprefix("gw") or 0)


def shared_temporary_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every process of this run sees: the parent of the per-process base
    temporary folders under xdist, the base folder itself without it."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if "PYTEST_XDIST_WORKER" in os.environ else base


def _group_of(item: pytest.Item) -> str | None:
    # RabbitMQ first: a test on the broker and Docker (the real stack) goes with the broker's
    # tests (some restart it), and builds into a repository of its own, so the Docker tests'
    # clean-up on the other process never removes its images.
    if item.get_closest_marker("rabbitmq") is not None:
        return "rabbitmq"
    if item.get_closest_marker("docker") is not None:
        return "docker"
    info = getattr(item, "_fixtureinfo", None)
    for definitions in getattr(info, "name2fixturedefs", {}).values():
        for definition in definitions:
            # A fixture wider than one test, defined in the test module itself.
            if definition.scope != "function" and definition.baseid.endswith(".py"):
                return str(definition.baseid)
    return None


# Folders whose tests each take seconds to minutes (builds, replicas, whole platforms).
SLOW_FOLDERS = ("tests/e2e/", "tests/fuzz/", "services/builder/", "services/gateway/")


def _start_order(item: pytest.Item) -> int:
    """Longest first: the Docker and RabbitMQ groups (the Docker builds take minutes), then the
    slow folders, then the many quick tests that fill in the end evenly."""
    if _group_of(item) in ("docker", "rabbitmq"):
        return 0
    path = item.nodeid.split("::", 1)[0]
    return 1 if path.startswith(SLOW_FOLDERS) else 2


def mark_group(item: pytest.Item) -> None:
    """Give ``item`` its group, as it is collected: xdist turns the groups into node id
    suffixes in its own ``pytest_collection_modifyitems``, which may run before any other."""
    group = _group_of(item)
    if group is not None and item.get_closest_marker("xdist_group") is None:
        item.add_marker(pytest.mark.xdist_group(group))


def start_longest_first(items: list[pytest.Item]) -> None:
    """Put the longest work first: xdist hands out groups in the order of their first test,
    so a long group started last would end the run alone. (A stable sort: the tests of a
    module keep their order.)"""
    items.sort(key=_start_order)


REPLICA_PORTS = (20000, 29999)  # the registry's default service port range


def split_replica_ports() -> None:
    """Each test process registers services, and so starts replicas, on ports of its own
    share of the replica range (``REGISTRY_SERVICE_PORT_MIN``/``_MAX``, which every registry
    of the process reads, ``modelcloud up`` in a child process too): two processes' registries
    would otherwise both give a new service the first free port, and a replica's health check
    would be answered by the other process's replica on it."""
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    low, high = REPLICA_PORTS
    share = (high - low + 1) // count
    first = low + share * worker_index()
    os.environ.setdefault("REGISTRY_SERVICE_PORT_MIN", str(first))
    os.environ.setdefault("REGISTRY_SERVICE_PORT_MAX", str(first + share - 1))
