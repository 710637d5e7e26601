"""The modelcloud SDK wheels every test build installs, built once per test run.

The builder builds them into its cache on its first build (``pip wheel`` of ``sdk/`` and
``proto/``: seconds of CPU each time). Every builder of a test process already shares one
cache; with pytest-xdist the processes also share one build of the wheels, made by whichever
comes first while the others wait on a file lock, then copied into each process's cache
(copied, not linked: the build sandbox mounts the wheelhouse read-only by its real path).
"""

import asyncio
import fcntl
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelcloud_testing.workers import shared_temporary_root
from services.builder.backends.sdk import SdkWheels


@dataclass(frozen=True)
class SdkWheelhouse:
    folder: Path | None  # <wheelhouse>/<digest> as the builder names it; None: from the index

    def install_into(self, wheelhouse: Path) -> None:
        """Put the wheels where a builder with ``wheelhouse`` looks for them."""
        if self.folder is not None:
            shutil.copytree(self.folder, wheelhouse / self.folder.name, dirs_exist_ok=True)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def sdk_wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> SdkWheelhouse:
    root = shared_temporary_root(tmp_path_factory)
    shared = root / "sdk-wheelhouse"
    with _locked(root / "sdk-wheelhouse.lock"):
        sdk = asyncio.run(SdkWheels(shared)(lambda line: None))
    folder = sdk.wheels[0].parent if sdk.wheels else None
    return SdkWheelhouse(folder)
