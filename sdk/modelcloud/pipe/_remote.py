"""The central store as the platform's file store service, over its REST API.

A push first asks the service to *link* every file by its SHA-256: content the store has
already is recorded without sending a byte, so pushing an unchanged folder transfers
nothing. What is missing travels, several transfers at a time, by size:

* small files go in *packs*, many to one tar body, each member carrying its digest;
* the rest stream through the service, which checks the digest before keeping anything;
* or, when the store offers it, large files go straight to S3 through presigned URLs (in
  parallel parts), and the service re-reads them to check the digest before keeping them.

Pulls stream to a temporary file, check the digest, and rename into place; with direct
transfers the bytes come straight from S3.
"""

import contextlib
import hashlib
import io
import os
import tarfile
import uuid
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property, partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from modelcloud.pipe._center import CHUNK, FileAttributes, Progress
from modelcloud.pipe._paths import INTERNAL_PREFIX
from modelcloud.pipe.errors import PipeError, PipeFileNotFound

_LINK_BATCH = 1000
_PACK_FILE_MAX = 1 << 20  # files up to this size travel in packs
_PACK_BYTES = 16 << 20
_PACK_SHA256 = "MODELCLOUD.sha256"


@dataclass(frozen=True)
class _Limits:
    direct_uploads: bool = False
    direct_downloads: bool = False
    direct_min_bytes: int = 1 << 62
    part_size: int = 64 << 20
    pack_max_bytes: int = 0
    pack_max_files: int = 0


@dataclass(frozen=True)
class _Upload:
    source: Path
    name: str
    sha256: str
    size: int


class RemoteCenter:
    def __init__(
        self,
        server: str,
        token: str | None,
        project: str,
        model_name: str,
        version: str,
        *,
        workers: int = 8,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.server = server.rstrip("/")
        models = f"/v1/projects/{quote(project)}/models"
        self._base = f"{models}/{quote(model_name)}/versions/{quote(version)}"
        self.filerepo: Path | str = f"{self.server}{models}/{model_name}"
        self.dir: Path | str = f"{self.server}{self._base}"
        self._workers = workers
        limits = httpx.Limits(max_connections=workers * 2, max_keepalive_connections=workers * 2)
        timeout = httpx.Timeout(300, connect=10)
        self._http = httpx.Client(
            base_url=self.server,
            headers=headers,
            timeout=timeout,
            limits=limits,
            transport=transport,
        )
        # Presigned URLs carry their own authorization: never send the token to S3.
        self._s3 = httpx.Client(timeout=timeout, limits=limits, transport=transport)
        # The seed's pipes are never closed explicitly: close the connections with the pipe.
        self._closer = weakref.finalize(self, _close_all, self._http, self._s3)

    def close(self) -> None:
        self._closer()

    def describe(self) -> dict[str, str | None]:
        return {"filereporoot": self.server, "server": self.server}

    @cached_property
    def _limits(self) -> _Limits:
        try:
            response = self._http.get("/v1/transfers")
        except httpx.HTTPError as exc:
            raise PipeError(f"cannot reach the file store at {self.server}: {exc}") from exc
        if response.status_code == 404:  # an older file store: everything through it
            return _Limits()
        known = _Limits.__dataclass_fields__
        data: dict[str, Any] = self._checked(response, None).json()
        return _Limits(**{k: v for k, v in data.items() if k in known})

    def attributes(self) -> list[FileAttributes]:
        entries = self._checked(self._http.get(f"{self._base}/files"), None).json()
        return [
            FileAttributes(
                name=e["path"],
                size=int(e["size"]),
                mtime_ns=int(datetime.fromisoformat(e["modified_at"]).timestamp() * 1e9),
                md5=e["md5"],
            )
            for e in entries
        ]

    # ------------------------------------------------------------------ push

    def store(self, files: list[tuple[Path, str]], progress: Progress | None) -> None:
        with ThreadPoolExecutor(self._workers) as pool:
            digests = list(pool.map(lambda pair: _sha256(pair[0]), files))
        missing: set[str] = set()
        for start in range(0, len(files), _LINK_BATCH):
            batch = [
                {"path": name, "sha256": digest, "modified_at": _mtime(source)}
                for (source, name), digest in zip(
                    files[start : start + _LINK_BATCH],
                    digests[start : start + _LINK_BATCH],
                    strict=True,
                )
            ]
            answer = self._checked(
                self._http.post(f"{self._base}/link", json={"files": batch}), None
            )
            missing.update(answer.json()["missing"])
        uploads: list[_Upload] = []
        for (source, name), digest in zip(files, digests, strict=True):
            size = source.stat().st_size
            if name in missing:
                uploads.append(_Upload(source, name, digest, size))
            elif progress is not None:
                progress(size)
        jobs = self._upload_jobs(uploads, progress)
        with ThreadPoolExecutor(self._workers) as pool:
            for future in [pool.submit(job) for job in jobs]:
                future.result()

    def _upload_jobs(
        self, uploads: list[_Upload], progress: Progress | None
    ) -> list[Callable[[], None]]:
        limits = self._limits
        jobs: list[Callable[[], None]] = []
        small: list[_Upload] = []
        for upload in uploads:
            if limits.direct_uploads and upload.size >= limits.direct_min_bytes:
                jobs.append(partial(self._upload_direct, upload, progress))
            elif limits.pack_max_files > 1 and upload.size <= _PACK_FILE_MAX:
                small.append(upload)
            else:
                jobs.append(partial(self._upload_through, upload, progress))
        # Spread the small files over the workers, within the store's pack limits.
        per_pack = max(16, -(-len(small) // self._workers))
        per_pack = min(per_pack, limits.pack_max_files)
        max_bytes = min(_PACK_BYTES, limits.pack_max_bytes)
        pack: list[_Upload] = []
        for upload in small:
            if pack and (
                len(pack) >= per_pack or sum(u.size for u in pack) + upload.size > max_bytes
            ):
                jobs.append(partial(self._upload_pack, pack, progress))
                pack = []
            pack.append(upload)
        if len(pack) == 1:
            jobs.append(partial(self._upload_through, pack[0], progress))
        elif pack:
            jobs.append(partial(self._upload_pack, pack, progress))
        return jobs

    def _upload_through(self, upload: _Upload, progress: Progress | None) -> None:
        headers = {
            "X-Content-SHA256": upload.sha256,
            "Content-Length": str(upload.size),
            "X-Modified-At": _mtime(upload.source),
            "Content-Type": "application/octet-stream",
        }
        try:
            response = self._http.put(
                f"{self._base}/files/{quote(upload.name)}",
                content=_chunks(upload.source, 0, upload.size, progress),
                headers=headers,
            )
        except httpx.HTTPError as exc:
            raise PipeError(f"cannot push {upload.name}: {exc}", upload.name) from exc
        self._checked(response, upload.name)

    def _upload_pack(self, pack: list[_Upload], progress: Progress | None) -> None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for upload in pack:
                info = tarfile.TarInfo(upload.name)
                info.size = upload.size
                info.mtime = upload.source.stat().st_mtime
                info.pax_headers = {_PACK_SHA256: upload.sha256}
                with upload.source.open("rb") as reader:
                    archive.addfile(info, reader)
        names = ", ".join(u.name for u in pack[:3]) + (", ..." if len(pack) > 3 else "")
        try:
            response = self._http.post(
                f"{self._base}/packs",
                content=buffer.getvalue(),
                headers={"Content-Type": "application/x-tar"},
            )
        except httpx.HTTPError as exc:
            raise PipeError(f"cannot push {names}: {exc}", pack[0].name) from exc
        self._checked(response, pack[0].name if len(pack) == 1 else None)
        if progress is not None:
            progress(sum(u.size for u in pack))

    def _upload_direct(self, upload: _Upload, progress: Progress | None) -> None:
        name = upload.name
        started = self._checked(
            self._http.post(
                f"{self._base}/uploads",
                json={"path": name, "sha256": upload.sha256, "size": upload.size},
            ),
            name,
        ).json()
        upload_id, multipart_id = started["upload_id"], started["multipart_id"]
        part_size, urls = int(started["part_size"]), list(started["urls"])
        try:
            parts = [
                (url, number * part_size, min(part_size, upload.size - number * part_size))
                for number, url in enumerate(urls)
            ]
            with ThreadPoolExecutor(min(self._workers, len(parts))) as pool:
                etags = list(pool.map(lambda part: self._put_part(upload, part, progress), parts))
            completed = self._http.post(
                f"{self._base}/uploads/{upload_id}/complete",
                json={
                    "path": name,
                    "sha256": upload.sha256,
                    "size": upload.size,
                    "modified_at": _mtime(upload.source),
                    "multipart_id": multipart_id,
                    "etags": etags if multipart_id else [],
                },
            )
            self._checked(completed, name)
        except BaseException:
            params = {"multipart_id": multipart_id} if multipart_id else {}
            # If even this fails, the bucket's lifecycle rule drops the abandoned upload.
            with contextlib.suppress(httpx.HTTPError):
                self._http.delete(f"{self._base}/uploads/{upload_id}", params=params)
            raise

    def _put_part(
        self, upload: _Upload, part: tuple[str, int, int], progress: Progress | None
    ) -> str:
        url, offset, length = part
        try:
            response = self._s3.put(
                url,
                content=_chunks(upload.source, offset, length, progress),
                headers={"Content-Length": str(length)},
            )
        except httpx.HTTPError as exc:
            raise PipeError(f"cannot push {upload.name}: {exc}", upload.name) from exc
        if not response.is_success:
            raise PipeError(
                f"{upload.name}: the object store answered {response.status_code}: "
                f"{response.text[:200]}",
                upload.name,
            )
        return str(response.headers.get("etag", ""))

    # ------------------------------------------------------------------ pull

    def fetch(self, files: list[tuple[str, Path]], progress: Progress | None) -> None:
        if not files:
            return
        sources: list[tuple[str, str | None, Path]]
        if self._limits.direct_downloads:
            sources = []
            for start in range(0, len(files), _LINK_BATCH):
                batch = files[start : start + _LINK_BATCH]
                answer = self._checked(
                    self._http.post(
                        f"{self._base}/downloads", json={"paths": [n for n, _ in batch]}
                    ),
                    batch[0][0] if len(batch) == 1 else None,
                ).json()
                urls = {link["path"]: link["url"] for link in answer["files"]}
                sources.extend((name, urls[name], target) for name, target in batch)
        else:
            sources = [(name, None, target) for name, target in files]
        with ThreadPoolExecutor(self._workers) as pool:
            for future in [pool.submit(self._fetch_one, *s, progress) for s in sources]:
                future.result()

    def _fetch_one(
        self, name: str, url: str | None, target: Path, progress: Progress | None
    ) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.parent / f"{INTERNAL_PREFIX}-tmp-{uuid.uuid4().hex}"
        digest = hashlib.sha256()
        client = self._http if url is None else self._s3
        try:
            with client.stream("GET", url or f"{self._base}/files/{quote(name)}") as response:
                self._checked(response, name)
                with temporary.open("wb") as writer:
                    for chunk in response.iter_bytes(CHUNK):
                        digest.update(chunk)
                        writer.write(chunk)
                        if progress is not None:
                            progress(len(chunk))
                # A presigned object is stored under its digest; the service sends it along.
                expected = response.headers.get("x-content-sha256") or _key_digest(url)
            if expected and digest.hexdigest() != expected:
                raise PipeError(f"{name} arrived damaged (SHA-256 mismatch); pull it again", name)
            os.replace(temporary, target)
        except httpx.HTTPError as exc:
            raise PipeError(f"cannot pull {name}: {exc}", name) from exc
        finally:
            temporary.unlink(missing_ok=True)

    # ------------------------------------------------------------------ delete

    def delete(self, name: str) -> None:
        self._checked(self._http.delete(f"{self._base}/files/{quote(name)}"), name)

    def _checked(self, response: httpx.Response, name: str | None) -> httpx.Response:
        if response.is_success:
            return response
        if not response.is_stream_consumed:
            response.read()
        try:
            detail = response.json().get("detail") or response.reason_phrase
        except ValueError:
            detail = response.text[:200] or response.reason_phrase
        what = f"{name}: " if name else ""
        if response.status_code == 404:
            raise PipeFileNotFound(f"{what}{detail}", name)
        raise PipeError(f"{what}the file store answered {response.status_code}: {detail}", name)


def _close_all(*clients: httpx.Client) -> None:
    for client in clients:
        client.close()


def _chunks(path: Path, offset: int, length: int, progress: Progress | None) -> Iterator[bytes]:
    with path.open("rb") as reader:
        reader.seek(offset)
        left = length
        while left > 0 and (chunk := reader.read(min(CHUNK, left))):
            left -= len(chunk)
            if progress is not None:
                progress(len(chunk))
            yield chunk


def _key_digest(url: str | None) -> str | None:
    if url is None:
        return None
    last = httpx.URL(url).path.rsplit("/", 1)[-1]
    return last if len(last) == 64 else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as reader:
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _mtime(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat()


def list_remote(server: str, token: str | None, path: str) -> list[str]:
    """A listing (models, or a model's versions) from the file store."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(f"{server.rstrip('/')}{path}", headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        raise PipeError(f"cannot reach the file store at {server}: {exc}") from exc
    if response.status_code == 404:
        return []
    if not response.is_success:
        raise PipeError(f"the file store answered {response.status_code}: {response.text[:200]}")
    names: list[str] = response.json()
    return names
