"""Talking to a ModelCloud platform (its gateway) for the CLI: where it is, with which
token, and the REST calls behind ``deploy``, ``status``, ``logs``, ``offline`` and
``token create``.

Connection: ``MODELCLOUD_URL`` and ``MODELCLOUD_TOKEN``, else the config file that
``modelcloud up`` writes (``MODELCLOUD_CONFIG``, default ``~/.modelcloud/config.json``).
"""

import io
import json
import os
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from modelcloud_proto.problem import Problem

_SKIPPED = {"__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache"}


class PlatformError(Exception):
    """The platform refused, or could not be reached; the message says why."""


class PlatformRefused(PlatformError):
    """A problem document from the platform, with its HTTP status and field errors."""

    def __init__(self, problem: Problem) -> None:
        fields = "; ".join(f"{e.field}: {e.message}" for e in problem.errors)
        super().__init__(f"{problem.title}: {problem.detail or fields or problem.status}")
        self.status = problem.status
        self.problem = problem


@dataclass(frozen=True)
class Connection:
    url: str
    token: str | None


def connection() -> Connection:
    url, token = os.environ.get("MODELCLOUD_URL"), os.environ.get("MODELCLOUD_TOKEN")
    config_path = Path(
        os.environ.get("MODELCLOUD_CONFIG", Path.home() / ".modelcloud" / "config.json")
    )
    if (url is None or token is None) and config_path.is_file():
        config = json.loads(config_path.read_text())
        url = url or config.get("url")
        if token is None and config.get("token_file"):
            token = Path(config["token_file"]).read_text().strip()
    if not url:
        raise PlatformError(
            "no platform configured: run `modelcloud up`, or set MODELCLOUD_URL and "
            "MODELCLOUD_TOKEN"
        )
    return Connection(url.rstrip("/"), token)


@dataclass(frozen=True)
class Deployed:
    project: str
    service: str
    version: str
    api_version: int
    url: str


class Platform:
    def __init__(self, conn: Connection, *, timeout: float = 300) -> None:
        headers = {"Authorization": f"Bearer {conn.token}"} if conn.token else {}
        self.url = conn.url
        self.http = httpx.Client(base_url=conn.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            answer = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise PlatformError(f"cannot reach the platform at {self.url}: {exc}") from None
        if answer.is_success:
            return answer.json() if answer.content else None
        raise _error(answer)

    def exists(self, path: str) -> bool:
        try:
            self.request("GET", path)
        except PlatformRefused as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # ------------------------------------------------------------------ deploy

    def deploy(
        self,
        folder: Path,
        *,
        project: str,
        group: str,
        name: str | None,
        version: str | None,
        port: int | None,
        replicas: int,
        log: Callable[[str], None],
    ) -> Deployed:
        """Register (creating project, group and service when missing), upload, build with
        live logs, publish, and wait until the version is online."""
        suggested = _service_block(folder)
        service = name or suggested.pop("name", None) or folder.resolve().name
        suggested.pop("name", None)
        if not self.exists(f"/v1/projects/{project}"):
            self.request("POST", "/v1/projects", json={"name": project})
            log(f"created project {project}")
        groups = [g["name"] for g in self.request("GET", f"/v1/projects/{project}/groups")]
        if group not in groups:
            self.request("POST", f"/v1/projects/{project}/groups", json={"name": group})
        base = f"/v1/projects/{project}/services/{service}"
        if not self.exists(base):
            body = {"name": service, "group": group, **suggested}
            if port is not None:
                body["port"] = port
            self.request("POST", f"/v1/projects/{project}/services", json=body)
            log(f"registered service {project}/{service}")
        existing = self.request("GET", f"{base}/versions")
        version = version or f"{len(existing) + 1}.0"
        self.request(
            "POST",
            f"{base}/versions",
            data={"version": version},
            files={"bundle": ("code.tar.gz", _bundle(folder), "application/gzip")},
        )
        log(f"uploaded {folder} as version {version}; building")
        self.request("POST", f"{base}/versions/{version}/build")
        self._follow_build(project, service, version, log)
        built = self._wait(f"{base}/versions/{version}", {"built", "build_failed"})
        if built["state"] != "built":
            raise PlatformError(f"the build failed: {built['state_detail']}")
        self.request("POST", f"{base}/versions/{version}/publish", json={"replicas": replicas})
        log("built; publishing")
        online = self._wait(f"{base}/versions/{version}", {"online", "publish_failed"})
        if online["state"] != "online":
            raise PlatformError(f"publishing failed: {online['state_detail']}")
        api = int(online["api_version"])
        route = f"/models/{project}/{service}/v{api}"
        self._wait_routed(route)
        return Deployed(project, service, version, api, f"{self.url}{route}")

    def _wait_routed(self, route: str, timeout: float = 30) -> None:
        """The gateway learns of a new version from an event, a moment after the registry
        says online: the URL printed must answer when the command returns."""
        deadline = time.monotonic() + timeout
        while self.http.get(f"{route}/meta").status_code == 404:
            if time.monotonic() > deadline:
                raise PlatformError(f"{route} is online but the gateway does not route it")
            time.sleep(0.1)

    def _follow_build(
        self, project: str, service: str, version: str, log: Callable[[str], None]
    ) -> None:
        build_id = None
        for _ in range(100):
            builds = self.request(
                "GET",
                f"/v1/projects/{project}/builds",
                params={"service": service, "version": version},
            )
            if builds:
                build_id = builds[-1]["id"]
                break
            time.sleep(0.2)
        if build_id is None:
            return  # the builder has not picked it up: the state polling says what happens
        for line in self.follow_logs(project, build_id):
            log(line)

    def follow_logs(self, project: str, build_id: str) -> Iterator[str]:
        path = f"/v1/projects/{project}/builds/{build_id}/logs"
        with self.http.stream("GET", path, params={"follow": "true"}, timeout=None) as answer:
            if not answer.is_success:
                answer.read()
                raise _error(answer)
            event = "message"
            for line in answer.iter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: ") and event == "message":
                    yield line.removeprefix("data: ")
                elif not line:
                    event = "message"

    def _wait(self, path: str, states: set[str], timeout: float = 3600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found: dict[str, Any] = self.request("GET", path)
            if found["state"] in states:
                return found
            time.sleep(0.3)
        raise PlatformError(f"{path} is still {found['state']} after {timeout:.0f} s")

    # ------------------------------------------------------------------ the rest

    def status(self) -> list[dict[str, Any]]:
        rows = []
        for project in self.request("GET", "/v1/projects"):
            name = project["name"]
            for service in self.request("GET", f"/v1/projects/{name}/services"):
                for version in self.request(
                    "GET", f"/v1/projects/{name}/services/{service['name']}/versions"
                ):
                    rows.append(
                        {
                            "project": name,
                            "service": service["name"],
                            "version": version["version"],
                            "state": version["state"],
                            "api_version": version["api_version"],
                            "replicas": len(version["replicas"]),
                            "detail": version["state_detail"],
                        }
                    )
        return rows


def _error(answer: httpx.Response) -> PlatformError:
    try:
        return PlatformRefused(Problem.model_validate(answer.json()))
    except ValueError:
        return PlatformError(f"the platform answered {answer.status_code}: {answer.text[:300]}")


def _service_block(folder: Path) -> dict[str, Any]:
    """The ``service:`` block of ``modelcloud.yml`` (page metadata), if any."""
    spec = folder / "modelcloud.yml"
    if not spec.is_file():
        return {}
    try:
        loaded = yaml.safe_load(spec.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise PlatformError(f"{spec} is not valid YAML: {exc}") from None
    block = loaded.get("service") if isinstance(loaded, dict) else None
    return dict(block) if isinstance(block, dict) else {}


def _bundle(folder: Path) -> bytes:
    if not (folder / "cloud_model.py").is_file():
        raise PlatformError(f"{folder} has no cloud_model.py")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if _SKIPPED & set(relative.parts) or not path.is_file() or path.is_symlink():
                continue
            archive.add(path, arcname=relative.as_posix())
    return buffer.getvalue()
