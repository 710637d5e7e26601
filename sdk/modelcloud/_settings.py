"""Model-server settings: the arguments of ``modelcloud.run()``, overridden by the platform
through ``MODELCLOUD_*`` environment variables so nobody edits ``cloud_model.py`` to move a
model to another port.

=================================  ============================================  ==========
variable                           meaning                                       default
=================================  ============================================  ==========
MODELCLOUD_HOST / MODELCLOUD_PORT  where to listen                               run() args
MODELCLOUD_CONCURRENCY             predictions running at once                   1
MODELCLOUD_MAX_BODY_BYTES          largest request body accepted (413 above)     33554432
MODELCLOUD_SETUP_OPTIONS           JSON object of setup options                  {}
MODELCLOUD_FILE_ROOTS              extra folders (os.pathsep-separated) that     (none)
                                   ``file`` inputs may name by local path
MODELCLOUD_ALLOW_PRIVATE_URLS      let URL inputs reach private addresses        false
MODELCLOUD_LOG_FORMAT              ``text`` or ``json``                          text
MODELCLOUD_REPLICA_KEY             the key every request but ``GET /healthz``    (none)
                                   must carry in ``X-ModelCloud-Replica-Key``
                                   (401 without it); the platform sets it
=================================  ============================================  ==========
"""

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from modelcloud._files import FilePolicy

T = TypeVar("T")
ENV_PREFIX = "MODELCLOUD_"


class SettingsError(ValueError):
    """An environment variable has a value the server cannot use."""


@dataclass(frozen=True)
class ServerSettings:
    host: str = "0.0.0.0"  # noqa: S104 - a model server is meant to be reached from outside
    port: int = 9000
    concurrency: int = 1
    max_body_bytes: int = 32 << 20
    setup_options: Mapping[str, Any] = field(default_factory=dict)
    file_roots: tuple[Path, ...] = ()
    allow_private_urls: bool = False
    log_format: Literal["text", "json"] = "text"
    replica_key: str | None = field(default=None, repr=False)

    def file_policy(self) -> FilePolicy:
        return FilePolicy(roots=self.file_roots, allow_private_urls=self.allow_private_urls)

    def with_env(self, environ: Mapping[str, str] | None = None) -> "ServerSettings":
        """These settings with every ``MODELCLOUD_*`` variable present applied on top."""
        env = os.environ if environ is None else environ
        changes: dict[str, Any] = {}
        readers: dict[str, Callable[[str], Any]] = {
            "host": str,
            "port": _port,
            "concurrency": _positive_int,
            "max_body_bytes": _positive_int,
            "setup_options": _json_object,
            "file_roots": lambda raw: (
                *self.file_roots,
                *(Path(p) for p in raw.split(os.pathsep) if p),
            ),
            "allow_private_urls": _flag,
            "log_format": _log_format,
            "replica_key": _secret,
        }
        for name, read in readers.items():
            variable = ENV_PREFIX + name.upper()
            if variable in env:
                try:
                    changes[name] = read(env[variable])
                except ValueError as exc:
                    raise SettingsError(f"{variable}={env[variable]!r}: {exc}") from None
        return replace(self, **changes)


def _port(raw: str) -> int:
    port = int(raw)
    if not 0 <= port <= 65535:
        raise ValueError("a port is between 0 and 65535")
    return port


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _json_object(raw: str) -> dict[str, Any]:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    return value


def _flag(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _secret(raw: str) -> str:
    if not raw.strip():
        # Refused rather than read as "no key": an empty value is a broken deployment, and
        # a server that then answered anyone would hide it.
        raise ValueError("must not be empty")
    return raw


def _log_format(raw: str) -> Literal["text", "json"]:
    if raw == "json":
        return "json"
    if raw == "text":
        return "text"
    raise ValueError("must be 'text' or 'json'")
