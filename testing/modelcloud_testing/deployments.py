"""Building and publishing the greeter on a :class:`~modelcloud_testing.platforms.Platform`,
and finding its replica processes on this machine."""

from typing import Any

import httpx

from modelcloud_testing.platforms import SERVICE, Platform
from modelcloud_testing.registries import tar_bundle, upload_version
from services.builder.backends.processes import all_pids, process_environment, process_status
from services.builder.backends.venv import OWNER_MARK, REPLICA_MARK


async def request_build(platform: Platform, version: str, files: dict[str, str]) -> None:
    uploaded = await upload_version(
        platform.registry.client,
        version,
        tar_bundle(dict[str, str | bytes](files)),
        service="greeter",
    )
    assert uploaded.status_code == 201, uploaded.text
    started = await platform.registry.client.post(f"{SERVICE}/versions/{version}/build")
    assert started.status_code == 202, started.text


async def build(platform: Platform, version: str, files: dict[str, str]) -> dict[str, Any]:
    await request_build(platform, version, files)
    return await platform.wait_state(version, "built", "build_failed")


async def log_of(platform: Platform, build_id: str) -> str:
    answer = await platform.builder.get(f"/v1/projects/vision/builds/{build_id}/logs")
    assert answer.status_code == 200
    return answer.text


async def publish(platform: Platform, version: str, replicas: int = 1) -> dict[str, Any]:
    answer = await platform.registry.client.post(
        f"{SERVICE}/versions/{version}/publish", json={"replicas": replicas}
    )
    assert answer.status_code == 202, answer.text
    return await platform.wait_state(version, "online", "publish_failed")


async def greet(address: str, name: str) -> str:
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"http://{address}/greet", json={"name": name})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["message"])


def replica_processes(owner: str | None = None) -> dict[int, dict[str, str]]:
    """Replica processes on this machine (of one builder), with their environment: the
    first of each replica (its sandbox's processes and the model server in it carry the
    marks too, under it)."""
    found = {}
    for pid in all_pids():
        env = process_environment(pid)
        if env and REPLICA_MARK in env and owner in (None, env.get(OWNER_MARK)):
            found[pid] = env
    return {pid: env for pid, env in found.items() if parent_of(pid) not in found}


def parent_of(pid: int) -> int | None:
    status = process_status(pid)
    return status[1] if status else None


def pid_on_port(port: int) -> int:
    for pid, env in replica_processes().items():  # ports are unique on the machine
        if env.get("MODELCLOUD_PORT") == str(port):
            return pid
    raise AssertionError(f"no replica process listens on {port}")
