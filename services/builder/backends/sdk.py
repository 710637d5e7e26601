"""The modelcloud SDK as it goes into every model's environment or image.

From a checkout (``sdk/`` and ``proto/`` beside the platform), wheels are built once per
content of those folders and installed from there, so a model always gets the SDK of the
platform that serves it; an installed platform installs the same version from the index.
"""

import asyncio
import hashlib
import importlib.util
import subprocess
import sys
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from services.builder.backends.base import LogLine

COMPLETE = ".modelcloud-complete"


@dataclass(frozen=True)
class Sdk:
    digest: str  # what an environment's cache key takes from the SDK
    install: list[str] = field(default_factory=list)  # pip install arguments
    wheels: list[Path] = field(default_factory=list)


class SdkWheels:
    def __init__(self, wheelhouse: Path) -> None:
        self.wheelhouse = wheelhouse
        self._lock = asyncio.Lock()

    async def __call__(self, log: LogLine) -> Sdk:
        sources = [_source_folder("modelcloud"), _source_folder("modelcloud_proto")]
        folders = [s for s in sources if s is not None]
        if len(folders) < len(sources):
            release = version("modelcloud")
            return Sdk(digest=f"index:{release}", install=[f"modelcloud=={release}"])
        async with self._lock:
            digest = await asyncio.to_thread(_tree_digest, folders)
            target = self.wheelhouse / digest[:16]
            if not (target / COMPLETE).is_file():
                log("building the modelcloud SDK wheels")
                await asyncio.to_thread(_build_wheels, folders, target)
        return Sdk(
            digest=digest,
            install=["--find-links", str(target), "modelcloud"],
            wheels=sorted(target.glob("*.whl")),
        )


def _build_wheels(folders: list[Path], target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(  # noqa: S603 - this interpreter's pip, on this checkout's folders
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(target),
            *map(str, folders),
        ],
        check=True,
        capture_output=True,
    )
    (target / COMPLETE).write_text("ok\n")


def _source_folder(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).resolve().parents[1]
    return folder if (folder / "pyproject.toml").is_file() else None


def _tree_digest(folders: list[Path]) -> str:
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            parts = path.relative_to(folder).parts
            skipped = {"__pycache__", "tests", "build"} & set(parts) or any(
                p.endswith(".egg-info") for p in parts
            )
            if path.is_file() and not skipped:
                digest.update(str(path.relative_to(folder)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()
