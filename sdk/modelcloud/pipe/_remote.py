"""The central store as the platform's file store service, over its REST API.

A push first asks the service to *link* every file by its SHA-256: content the store has
already is recorded without sending a byte, so pushing an unchanged folder transfers
nothing. Digests are remembered per file (``_digests.py``), so an unchanged file is not
read again either. What is missing travels, several transfers at a time, by size:

* small files go in *packs*, many to one tar body, each member carrying its digest;
* the rest stream through the service, which checks the digest before keeping anything;
  a large file whose digest is not known yet is sent while it is hashed (not read twice),
  and the digest the service computed must match the one computed here;
* or, when the store offers it (S3), large files go straight to S3 in parts, several at
  a time, each under a URL the service signed with the part's CRC32; the file is hashed
  while its parts travel, and the service keeps it only if the size and the CRC32s that
  S3 computed match (it never reads the bytes; every pull checks the SHA-256).

Pulls stream to a temporary file, check the digest, and rename into place; with direct
transfers the bytes come straight from S3, and files kept together in one object (a pack)
come down together, in one ranged request.

A transfer cut half way is not started over (``_retries.py``): a pull goes on from the byte
where it stopped (``Range``), a push sends the file again (a direct upload: only the part
that was cut), a few times with growing waits, on a dropped connection or a 5xx/429 answer;
never on a 4xx.
"""

import base64
import collections
import contextlib
import hashlib
import io
import os
import shutil
import tarfile
import uuid
import weakref
import zlib
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property, partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from modelcloud.pipe._center import CHUNK, FileAttributes, Progress
from modelcloud.pipe._digests import DigestCache
from modelcloud.pipe._objects import ObjectReader
from modelcloud.pipe._paths import INTERNAL_PREFIX, safe_relative
from modelcloud.pipe._retries import Retries, TransferCut, resumed, retryable_status, skipped
from modelcloud.pipe.errors import PipeError, PipeFileNotFound

_LINK_BATCH = 1000
_PACK_FILE_MAX = 1 << 20  # files up to this size travel in packs
_PACK_BYTES = 16 << 20
_PACK_SHA256 = "MODELCLOUD.sha256"
_STREAM_MIN = 64 << 20  # files from this size, digest unknown, are hashed while sent
_PIPELINE_MIN = 16 << 20  # pulls from this size are hashed and written in a second thread
_BEHIND_CHUNKS = 8
_PARTS_IN_FLIGHT = 6  # parts of one direct upload held and sent at once


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
    sha256: str | None  # None: hashed while it is sent
    size: int


_Stored = list[tuple[Path, str]]  # files stored, with their digests


def _digest(upload: _Upload) -> str:
    if upload.sha256 is None:  # pragma: no cover - such files are never packed
        raise PipeError(f"{upload.name}: sent before its digest was known", upload.name)
    return upload.sha256


@dataclass(frozen=True)
class _Part:
    """One part of a direct upload: its number (from 1), CRC32 (base64) and bytes."""

    number: int
    crc32: str
    data: bytes


@dataclass(frozen=True)
class _SentParts:
    """What a direct upload read and sent: the SHA-256, and each part's (ETag, CRC32)."""

    sha256: str
    parts: list[tuple[str, str]]


@dataclass(frozen=True)
class _Download:
    name: str
    target: Path
    url: str | None  # None: through the service
    sha256: str | None
    offset: int | None  # in the object at ``url``, which holds other files too
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
        digests: DigestCache | None = None,
        retries: Retries | None = None,
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
        self._digests = digests or DigestCache()
        self._retries = retries or Retries()
        self._objects = ObjectReader(timeout_s=300)
        # The seed's pipes are never closed explicitly: close the connections with the pipe.
        self._closer = weakref.finalize(
            self, _close_all, self._http, self._s3, self._objects, self._digests
        )

    def close(self) -> None:
        self._closer()

    def describe(self) -> dict[str, str | None]:
        return {"filereporoot": self.server, "server": self.server}

    @cached_property
    def _limits(self) -> _Limits:
        response = self._retries.send(
            lambda: self._http.get("/v1/transfers"),
            None,
            what=f"reach the file store at {self.server}",
        )
        if response.status_code == 404:  # an older file store: everything through it
            return _Limits()
        known = _Limits.__dataclass_fields__
        data: dict[str, Any] = self._checked(response, None).json()
        return _Limits(**{k: v for k, v in data.items() if k in known})

    def attributes(self) -> list[FileAttributes]:
        listed = self._retries.send(
            lambda: self._http.get(f"{self._base}/files"), None, what="list the files"
        )
        entries = self._checked(listed, None).json()
        return [_entry(e) for e in entries]

    # ------------------------------------------------------------------ push

    def store(self, files: list[tuple[Path, str]], progress: Progress | None) -> None:
        if not files:
            return
        self._limits  # noqa: B018 - asked once, before the workers need it
        sizes = [source.stat().st_size for source, _ in files]
        with ThreadPoolExecutor(self._workers) as pool:
            digests = list(
                pool.map(
                    lambda pair: self._digest_before_sending(*pair), zip(files, sizes, strict=True)
                )
            )
        missing: set[str] = set()
        known = [(f, d) for f, d in zip(files, digests, strict=True) if d is not None]
        for start in range(0, len(known), _LINK_BATCH):
            batch = [
                {"path": name, "sha256": digest, "modified_at": _mtime(source)}
                for (source, name), digest in known[start : start + _LINK_BATCH]
            ]
            linked = self._retries.send(
                partial(self._http.post, f"{self._base}/link", json={"files": batch}),
                None,
                what="link files",
            )
            answer = self._checked(linked, None)
            missing.update(answer.json()["missing"])
        uploads: list[_Upload] = []
        for (source, name), digest, size in zip(files, digests, sizes, strict=True):
            if digest is None or name in missing:
                uploads.append(_Upload(source, name, digest, size))
            elif progress is not None:
                progress(size)
        jobs = self._upload_jobs(uploads, progress)
        stored = [(source, digest) for (source, name), digest in known if name not in missing]
        with ThreadPoolExecutor(self._workers) as pool:
            for future in [pool.submit(job) for job in jobs]:
                stored.extend(future.result())
        self._digests.remember(stored)

    def _digest_before_sending(self, file: tuple[Path, str], size: int) -> str | None:
        """The file's digest, or None for a large file best hashed while it is sent."""
        source = file[0]
        if (digest := self._digests.known(source)) is not None:
            return digest
        if size >= _STREAM_MIN or self._goes_direct(size):
            return None
        return _sha256(source)

    def _goes_direct(self, size: int) -> bool:
        limits = self._limits
        return limits.direct_uploads and size >= limits.direct_min_bytes

    def _upload_jobs(
        self, uploads: list[_Upload], progress: Progress | None
    ) -> list[Callable[[], _Stored]]:
        """Jobs that send the uploads; each answers with the files it stored, and digests."""
        limits = self._limits
        jobs: list[Callable[[], _Stored]] = []
        small: list[_Upload] = []
        for upload in uploads:
            if self._goes_direct(upload.size):  # hashed while sent, straight to S3
                jobs.append(partial(self._upload_direct, upload, progress))
            elif upload.sha256 is None:  # hashed while sent, through the service
                jobs.append(partial(self._upload_through, upload, progress))
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

    def _upload_through(self, upload: _Upload, progress: Progress | None) -> _Stored:
        headers = {
            "X-Modified-At": _mtime(upload.source),
            "Content-Type": "application/octet-stream",
        }
        if upload.sha256 is None:
            # Hashed while sent: the digest follows the file's bytes (the service checks
            # it against the bytes it received).
            headers["X-File-Size"] = str(upload.size)
            headers["Content-Length"] = str(upload.size + _TRAILER_SIZE)
        else:
            headers["X-Content-SHA256"] = upload.sha256
            headers["Content-Length"] = str(upload.size)
        once = _ProgressOnce(progress)

        def send() -> httpx.Response:
            # A cut upload leaves nothing on the service: the file is sent again, whole.
            content: Iterator[bytes]
            if upload.sha256 is None:
                content = _with_trailer(upload.source, upload.size, once.attempt())
            else:
                content = _chunks(upload.source, 0, upload.size, once.attempt())
            return self._http.put(
                f"{self._base}/files/{quote(upload.name)}", content=content, headers=headers
            )

        response = self._retries.send(send, upload.name, what=f"push {upload.name}")
        stored: str = self._checked(response, upload.name).json()["sha256"]
        return [(upload.source, stored)]

    def _upload_pack(self, pack: list[_Upload], progress: Progress | None) -> _Stored:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for upload in pack:
                info = tarfile.TarInfo(upload.name)
                info.size = upload.size
                info.mtime = upload.source.stat().st_mtime
                info.pax_headers = {_PACK_SHA256: _digest(upload)}
                with upload.source.open("rb") as reader:
                    archive.addfile(info, reader)
        names = ", ".join(u.name for u in pack[:3]) + (", ..." if len(pack) > 3 else "")
        response = self._retries.send(
            partial(
                self._http.post,
                f"{self._base}/packs",
                content=buffer.getvalue(),
                headers={"Content-Type": "application/x-tar"},
            ),
            pack[0].name,
            what=f"push {names}",
        )
        self._checked(response, pack[0].name if len(pack) == 1 else None)
        if progress is not None:
            progress(sum(u.size for u in pack))
        return [(u.source, _digest(u)) for u in pack]

    def _upload_direct(self, upload: _Upload, progress: Progress | None) -> _Stored:
        """Parts straight to S3, a few at a time, each under a URL signed with its CRC32;
        the file is read once, hashed while its parts travel."""
        name = upload.name
        # Each start makes a multipart upload: one whose answer was lost is not started again
        # (it would be left unfinished, out of reach); only one that never left is.
        started = self._retries.send(
            partial(
                self._http.post, f"{self._base}/uploads", json={"path": name, "size": upload.size}
            ),
            name,
            what=f"push {name}",
            resend=False,
        )
        ticket = self._checked(started, name).json()
        uploads = f"{self._base}/uploads/{ticket['upload_id']}"
        multipart_id = ticket["multipart_id"]
        try:
            sent = self._send_parts(upload, uploads, multipart_id, ticket, progress)
            # Only a completion that never reached the service, or that it turned away (503,
            # 429), is sent again; one that did complete answers the same the second time.
            completed = self._retries.send(
                partial(
                    self._http.post,
                    f"{uploads}/complete",
                    json={
                        "path": name,
                        "size": upload.size,
                        "sha256": sent.sha256,
                        "modified_at": _mtime(upload.source),
                        "multipart_id": multipart_id,
                        "parts": [{"etag": e, "crc32": c} for e, c in sent.parts],
                    },
                ),
                name,
                what=f"push {name}",
                resend=False,
            )
            self._checked(completed, name)
        except BaseException:
            # If even this fails, the bucket's lifecycle rule drops the abandoned parts.
            with contextlib.suppress(httpx.HTTPError):
                self._http.delete(uploads, params={"multipart_id": multipart_id})
            raise
        return [(upload.source, sent.sha256)]

    def _send_parts(
        self,
        upload: _Upload,
        uploads: str,
        multipart_id: str,
        ticket: dict[str, Any],
        progress: Progress | None,
    ) -> "_SentParts":
        part_size, count = int(ticket["part_size"]), int(ticket["parts"])
        sha256 = hashlib.sha256()
        in_flight = max(1, min(self._workers, _PARTS_IN_FLIGHT))
        sending: collections.deque[Future[str]] = collections.deque()
        etags: list[Future[str]] = []
        crc32s: list[str] = []
        with (
            upload.source.open("rb") as reader,
            ThreadPoolExecutor(in_flight, thread_name_prefix="push-part") as pool,
        ):
            try:
                for number in range(1, count + 1):
                    length = min(part_size, upload.size - (number - 1) * part_size)
                    part = reader.read(length)
                    if len(part) != length:
                        raise PipeError(
                            f"{upload.name} got shorter while it was sent; push it again",
                            upload.name,
                        )
                    sha256.update(part)
                    crc32 = base64.b64encode(zlib.crc32(part).to_bytes(4, "big")).decode()
                    crc32s.append(crc32)
                    if len(sending) >= in_flight:
                        sending.popleft().result()
                    sending.append(
                        pool.submit(
                            self._put_part,
                            upload.name,
                            uploads,
                            multipart_id,
                            _Part(number, crc32, part),
                            progress,
                        )
                    )
                    etags.append(sending[-1])
                parts = [(etag.result(), crc) for etag, crc in zip(etags, crc32s, strict=True)]
            except BaseException:
                for queued in sending:  # parts not sent yet are not sent at all
                    queued.cancel()
                raise
        return _SentParts(sha256.hexdigest(), parts)

    def _put_part(
        self,
        name: str,
        uploads: str,
        multipart_id: str,
        part: "_Part",
        progress: Progress | None,
    ) -> str:
        """Have the part's URL signed with its CRC32, then PUT the part there; a part cut
        on its way is sent again, alone (S3 keeps the last copy of a part number)."""
        signed = self._retries.send(
            partial(
                self._http.post,
                f"{uploads}/parts",
                json={
                    "multipart_id": multipart_id,
                    "parts": [{"number": part.number, "crc32": part.crc32}],
                },
            ),
            name,
            what=f"push {name}",
        )
        (url,) = self._checked(signed, name).json()["urls"]
        response = self._retries.send(
            partial(self._s3.put, url, content=part.data), name, what=f"push {name}"
        )
        if not response.is_success:
            raise PipeError(
                f"{name}: the object store answered {response.status_code}: {response.text[:200]}",
                name,
            )
        if progress is not None:
            progress(len(part.data))
        return str(response.headers.get("etag", ""))

    # ------------------------------------------------------------------ pull

    def fetch(self, files: list[tuple[str, Path]], progress: Progress | None) -> None:
        if not files:
            return
        downloads: list[_Download] = []
        if self._limits.direct_downloads:
            for start in range(0, len(files), _LINK_BATCH):
                batch = files[start : start + _LINK_BATCH]
                one = batch[0][0] if len(batch) == 1 else None
                links_asked = self._retries.send(
                    partial(
                        self._http.post,
                        f"{self._base}/downloads",
                        json={"paths": [n for n, _ in batch]},
                    ),
                    one,
                    what=f"pull {one}" if one else "pull files",
                )
                answer = self._checked(links_asked, one).json()
                links = {link["path"]: link for link in answer["files"]}
                for name, target in batch:
                    link = links[name]
                    downloads.append(
                        _Download(
                            name,
                            target,
                            link["url"],
                            link["sha256"],
                            link.get("offset"),
                            int(link["size"]),
                        )
                    )
        else:
            downloads = [_Download(name, target, None, None, None, 0) for name, target in files]
        jobs: list[Callable[[], None]] = []
        shared: dict[str, list[_Download]] = {}  # files kept together in one object
        for download in downloads:
            if download.url is not None and download.offset is not None:
                shared.setdefault(download.url, []).append(download)
            else:
                jobs.append(partial(self._fetch_one, download, progress))
        jobs.extend(partial(self._fetch_together, group, progress) for group in shared.values())
        with ThreadPoolExecutor(self._workers) as pool:
            for future in [pool.submit(job) for job in jobs]:
                future.result()

    def _fetch_one(self, download: _Download, progress: Progress | None) -> None:
        """One file, from S3 (presigned) or through the service; a pull cut half way goes
        on from the byte where it stopped (``Range``), and the SHA-256 is checked over
        every byte at the end."""
        name, url = download.name, download.url
        if url is not None:  # presigned: the link names the digest
            size = download.size

            def from_object(start: int) -> contextlib.AbstractContextManager[Iterator[bytes]]:
                if start == 0:
                    return self._object_from(url, name, 0, None)
                return self._object_from(url, name, start, size - 1)

            chunks = resumed(from_object, name, self._retries)
            _write_checked(download, partial(_sha256_of, download), chunks, progress)
            return
        digests: list[str | None] = []  # of each answer: the file must not change between them

        @contextlib.contextmanager
        def from_service(start: int) -> Iterator[Iterator[bytes]]:
            headers = {"Range": f"bytes={start}-"} if start else {}
            path = f"{self._base}/files/{quote(name)}"
            with self._http.stream("GET", path, headers=headers) as response:
                if retryable_status(response.status_code):
                    response.read()
                    raise TransferCut(f"{name}: the file store answered {response.status_code}")
                self._checked(response, name)
                digests.append(response.headers.get("x-content-sha256"))
                if digests[-1] != digests[0]:
                    raise PipeError(f"{name} changed while it was pulled; pull it again", name)
                chunks = response.iter_bytes(CHUNK)
                # An older file store ignores the range: the whole file comes again.
                yield skipped(chunks, start) if start and response.status_code == 200 else chunks

        chunks = resumed(from_service, name, self._retries)
        _write_checked(download, lambda: digests[0] if digests else None, chunks, progress)

    @contextlib.contextmanager
    def _object_from(
        self, url: str, name: str, first: int, last: int | None
    ) -> Iterator[Iterator[bytes]]:
        """The object's bytes from ``first`` (to ``last``, when given)."""
        with self._objects.get(url, name, first=first, last=last) as body:
            chunks = body.chunks(CHUNK)
            # A server that ignores the range sends the whole object again.
            yield skipped(chunks, first) if first and body.status == 200 else chunks

    def _fetch_together(self, group: list[_Download], progress: Progress | None) -> None:
        """Files lying in one object (a pack): one ranged GET over all of them, each file
        cut out of the stream and checked against its own digest."""
        spans: dict[tuple[int, int], list[_Download]] = {}  # one content, maybe many paths
        for download in group:
            spans.setdefault((download.offset or 0, download.size), []).append(download)
        ordered = sorted(spans)
        first = ordered[0][0]
        end = max(offset + size for offset, size in ordered)
        url, name = group[0].url or "", group[0].name
        chunks: Iterator[bytes] = iter(())
        if end > first:  # cut half way: on from the byte where it stopped
            chunks = resumed(
                lambda start: self._object_from(url, name, first + start, end - 1),
                name,
                self._retries,
            )
        try:
            stream = _ByteStream(chunks)
            position = first
            for offset, size in ordered:
                stream.skip(offset - position)
                position = offset + size
                lead, *copies = spans[(offset, size)]
                chunks_of_lead = stream.take(size, lead.name)
                _write_checked(lead, partial(_sha256_of, lead), chunks_of_lead, progress)
                for copy in copies:
                    _copy_into_place(lead.target, copy.target)
        finally:
            if isinstance(chunks, Generator):
                chunks.close()  # the connection, if the files were not read to the end

    # ------------------------------------------------------------------ delete

    def delete(self, name: str) -> None:
        deleted = self._retries.send(
            lambda: self._http.delete(f"{self._base}/files/{quote(name)}"),
            name,
            what=f"delete {name}",
            resend=False,  # a second delete of a deleted file would say it is not there
        )
        self._checked(deleted, name)

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


def _entry(entry: Any) -> FileAttributes:
    """One file of the store's listing, checked: the name becomes a local path on pulls, so
    one that would leave the folder is refused (:class:`UnsafePath`) before any write."""
    name = entry.get("path") if isinstance(entry, dict) else None
    if not isinstance(name, str):
        raise PipeError(f"the file store listed a file without a name: {str(entry)[:200]}")
    name = safe_relative(name, "file name sent by the file store")
    try:
        return FileAttributes(
            name=name,
            size=int(entry["size"]),
            mtime_ns=int(datetime.fromisoformat(entry["modified_at"]).timestamp() * 1e9),
            sha256=str(entry["sha256"]),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise PipeError(f"the file store listed {name} with bad attributes: {exc}", name) from exc


def _close_all(
    http: httpx.Client, s3: httpx.Client, objects: ObjectReader, digests: DigestCache
) -> None:
    http.close()
    s3.close()
    objects.close()
    digests.close()


class _Behind:
    """Work on each chunk done in order in a second thread, while the caller moves on to the
    next one (hashlib and file writes let go of the GIL), a few chunks behind at most."""

    def __init__(self, work: Callable[[bytes | memoryview], object], name: str) -> None:
        self._work = work
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._pending: collections.deque[Future[object]] = collections.deque()

    def __call__(self, chunk: bytes | memoryview) -> None:
        self._pending.append(self._pool.submit(self._work, chunk))
        if len(self._pending) > _BEHIND_CHUNKS:
            self._pending.popleft().result()

    def finish(self) -> None:
        """Wait until every chunk handed over is done (and raise what the work raised)."""
        while self._pending:
            self._pending.popleft().result()

    def __enter__(self) -> "_Behind":
        return self

    def __exit__(self, *exc: object) -> None:
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True)


def _chunks(
    path: Path,
    offset: int,
    length: int,
    progress: Progress | None,
    digest: "hashlib._Hash | None" = None,
) -> Iterator[bytes]:
    """The file's bytes from ``offset``; each chunk also goes to ``digest``, in a second
    thread while it is being sent."""
    with contextlib.ExitStack() as stack:
        reader = stack.enter_context(path.open("rb"))
        hash_behind = (
            None if digest is None else stack.enter_context(_Behind(digest.update, "push-hash"))
        )
        reader.seek(offset)
        left = length
        while left > 0 and (chunk := reader.read(min(CHUNK, left))):
            left -= len(chunk)
            if hash_behind is not None:
                hash_behind(chunk)
            if progress is not None:
                progress(len(chunk))
            yield chunk
        if left > 0:
            raise PipeError(f"{path} got shorter while it was sent; push it again", path.name)
        if hash_behind is not None:
            hash_behind.finish()  # the digest is complete once the last chunk is hashed


_TRAILER = '{{"sha256":"{sha256}"}}'
_TRAILER_SIZE = len(_TRAILER.format(sha256="0" * 64))


def _with_trailer(path: Path, size: int, progress: Progress | None) -> Iterator[bytes]:
    """The file's bytes, then its SHA-256 as the file store's upload trailer."""
    sha256 = hashlib.sha256()
    yield from _chunks(path, 0, size, progress, sha256)
    yield _TRAILER.format(sha256=sha256.hexdigest()).encode()


def _write_checked(
    download: _Download,
    expected: Callable[[], str | None],
    chunks: Iterator[bytes | memoryview],
    progress: Progress | None,
) -> None:
    """Write a file from its chunks to a temporary name, check its digest, rename it."""
    target = download.target
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f"{INTERNAL_PREFIX}-tmp-{uuid.uuid4().hex}"
    digest = hashlib.sha256()
    try:
        with (
            temporary.open("wb") as writer,
            _Behind(digest.update, "pull-hash") as hash_behind,
            _Behind(writer.write, "pull-write") as write_behind,
        ):
            # A large pull is hashed and written, each in a thread of its own, while the
            # next chunk comes from the network.
            behind = download.size >= _PIPELINE_MIN
            for chunk in chunks:
                if behind:
                    hash_behind(chunk)
                    write_behind(chunk)
                else:
                    digest.update(chunk)
                    writer.write(chunk)
                if progress is not None:
                    progress(len(chunk))
            hash_behind.finish()
            write_behind.finish()
        if (sha256 := expected()) and digest.hexdigest() != sha256:
            raise PipeError(
                f"{download.name} arrived damaged (SHA-256 mismatch); pull it again",
                download.name,
            )
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _sha256_of(download: _Download) -> str | None:
    return download.sha256


class _ProgressOnce:
    """Reports each byte once, however many tries send it."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._reported = 0
        self._sent = 0

    def attempt(self) -> Progress | None:
        """The progress callback for one more try, from the first byte."""
        self._sent = 0
        return None if self._progress is None else self

    def __call__(self, count: int) -> None:
        self._sent += count
        if self._progress is not None and self._sent > self._reported:
            self._progress(self._sent - self._reported)
            self._reported = self._sent


def _copy_into_place(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f"{INTERNAL_PREFIX}-tmp-{uuid.uuid4().hex}"
    try:
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


class _ByteStream:
    """Reads exact spans from a stream of chunks, without copying them."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._rest = memoryview(b"")

    def take(self, count: int, name: str) -> Iterator[memoryview]:
        while count > 0:
            if not self._rest:
                chunk = next(self._chunks, b"")
                if not chunk:
                    raise PipeError(f"{name}: the object store's answer ended early", name)
                self._rest = memoryview(chunk)
            piece, self._rest = self._rest[:count], self._rest[count:]
            count -= len(piece)
            yield piece

    def skip(self, count: int) -> None:
        for _ in self.take(count, "a pack"):
            pass


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
