"""ModelCloud's pytest plugin: the fixtures and helpers tests of more than one folder share
(``-p modelcloud_testing`` in pyproject.toml's addopts; ``testing/`` is on pytest's
``pythonpath``), so that no test folder imports another's.

- ``registries``: a registry in-process, its admin, services and version bundles
- ``servers``: PostgreSQL and RabbitMQ for the real-stack tests, a fresh database per test,
  a broker accepting connections before each RabbitMQ test
- ``platforms``: a registry and a builder on one local bus (venv or Docker backend)
- ``deployments``: building and publishing the greeter, its replica processes
- ``embedded``: ``modelcloud up`` in its own process, ports and home folder
- ``tracking``: the tracker pointed at an embedded platform
- ``sdk_wheels``: the SDK wheels built once per test run, shared by every builder cache
- ``polling``: waiting, with a deadline, for what sends no event
- ``serving``: an ASGI app on a real socket or in-process, a caller that leaves mid-call
- ``workers``: what keeps parallel test processes (pytest-xdist) apart
"""

import os

import pytest

from modelcloud_testing.workers import mark_group, split_replica_ports, start_longest_first

pytest_plugins = [
    "modelcloud_testing.servers",
    "modelcloud_testing.sdk_wheels",
    "modelcloud_testing.platforms",
    "modelcloud_testing.embedded",
    "modelcloud_testing.tracking",
]


def pytest_configure(config: pytest.Config) -> None:
    if _in_xdist_worker(config):
        split_replica_ports()


def _in_xdist_worker(config: pytest.Config) -> bool:
    return config.pluginmanager.hasplugin("xdist") and "PYTEST_XDIST_WORKER" in os.environ


def pytest_itemcollected(item: pytest.Item) -> None:
    if _in_xdist_worker(item.config):
        mark_group(item)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # In xdist's test processes only: a plain run keeps its order.
    if _in_xdist_worker(config):
        start_longest_first(items)
