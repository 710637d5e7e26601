"""Code bundles, fetched from the registry with the builder's own token and unpacked."""

import asyncio
import hashlib
import tarfile
from pathlib import Path

import httpx

from services.builder.backends.base import StepFailed
from services.common.tar_guard import TarLimits, TarRejected, open_checked_tar

STEP = "fetch the code bundle"


class BundleSource:
    def __init__(
        self,
        registry_url: str,
        token: str | None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=registry_url, headers=headers, transport=transport, timeout=300
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def fetch(
        self, *, project: str, service: str, version: str, sha256: str, into: Path
    ) -> Path:
        """Download the bundle and unpack it under ``into``; returns the source folder."""
        archive = into / "bundle.tar"
        url = f"/v1/projects/{project}/services/{service}/versions/{version}/bundle"
        try:
            async with self._http.stream("GET", url) as answer:
                if answer.status_code != 200:
                    await answer.aread()
                    raise StepFailed(
                        STEP, f"the registry answered {answer.status_code}: {answer.text[:300]}"
                    )
                digest = hashlib.sha256()
                with archive.open("wb") as out:
                    async for chunk in answer.aiter_bytes():
                        digest.update(chunk)
                        out.write(chunk)
        except httpx.HTTPError as exc:
            raise StepFailed(STEP, f"the registry cannot be reached: {exc}") from None
        if digest.hexdigest() != sha256:
            raise StepFailed(STEP, "the bundle's SHA-256 is not the one the version recorded")
        source = into / "source"
        source.mkdir()
        await asyncio.to_thread(_unpack, archive, source)
        return source


def _unpack(archive: Path, source: Path) -> None:
    """The registry checked the bundle at upload; a bundle stored before that check
    existed is walked here again (bounded headers, members and size) before ``tarfile``
    reads it, off the event loop, and the data filter refuses anything that would leave
    the folder all the same."""
    try:
        with open_checked_tar(archive, TarLimits(), what="the bundle") as bundle:
            bundle.extractall(source, filter="data")
    except TarRejected as exc:
        raise StepFailed(STEP, exc.message) from None
    except (tarfile.TarError, OSError) as exc:
        raise StepFailed(STEP, f"the bundle cannot be unpacked: {exc}") from None
