"""Blobs in an S3 bucket (AWS, MinIO, Ceph: any S3 endpoint), through boto3.

An upload through the service becomes a multipart upload while its body still arrives:
parts of 8 MiB or more go to S3 a few at a time, each with a CRC32 that S3 checks, and the
upload is completed only once the file store has checked the digest, else aborted, so no
unchecked content becomes visible and no parts are left behind. A pack goes up with boto3's
managed transfer.

Content whose digest is only known once the last byte has arrived streams into an object
of its own under ``objects/`` (S3 cannot rename it afterwards), and a pack of small files is
kept whole under ``packs/<project>/``: one PUT instead of one per file. The file store
records where those blobs lie and reads them back as byte ranges. A presigned GET binds no
range, so the keys say whose bytes an object holds (:func:`readable_whole`).

Direct uploads (presigned URLs) are multipart uploads into objects of their own under
``objects/``, each part's URL signed with the part's CRC32 so that S3 takes only those
bytes; on completion the file store compares the size and the composite CRC32 that S3
reports with what the client read (servers differ in which checksums they enforce, so it
checks the one S3 computed itself). A bucket lifecycle rule drops the parts of any
multipart upload left unfinished after a day.
"""

import base64
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from services.filestore.blobs.store import (
    CHUNK,
    BlobWriter,
    DirectTransfers,
    FinishedUpload,
    PackMember,
    PartsRejected,
    Placement,
    StoredObject,
    UploadNotFound,
    blob_key,
)
from services.filestore.settings import FilestoreSettings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_TRANSFER = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20)
_MIN_PART = 8 << 20
MAX_PARTS = 10_000  # the most parts S3 takes in one upload
_PARTS_IN_FLIGHT = 6
OBJECTS_PREFIX = "objects/"
PACKS_PREFIX = "packs/"
BLOBS_PREFIX = "blobs/"
_MISSING = ("404", "NoSuchKey", "NotFound", "NoSuchUpload")
_REJECTED = ("InvalidPart", "InvalidPartOrder", "EntityTooSmall", "BadDigest", "InvalidArgument")


def part_size_for(size: int, least: int) -> int:
    """``least``, or more (whole MiB) for a file that would need over :data:`MAX_PARTS`."""
    floor = -(-size // MAX_PARTS)
    return max(least, -(-floor // (1 << 20)) * (1 << 20))


def readable_whole(key: str, offset: int, project: str) -> bool:
    """Whether a reader of ``project`` may be handed object ``key`` whole, for a blob at
    ``offset`` in it: a presigned GET binds no byte range, so whoever holds the URL reads
    every byte of the object, not just the blob's.

    True for an object that holds the blob alone (a through upload whose digest came last:
    ``objects/<uuid>``, the checked bytes and nothing else), the project's own direct upload
    (``objects/<project>/<uuid>``) and a pack the project sent itself
    (``packs/<project>/<uuid>``). Never for another project's objects, nor for a pack stored
    before packs were named by project (``packs/<uuid>``): those hold other files."""
    if key.startswith(PACKS_PREFIX):
        owner, _, _ = key.removeprefix(PACKS_PREFIX).rpartition("/")
        return owner == project
    if key.startswith(OBJECTS_PREFIX):
        owner, slash, _ = key.removeprefix(OBJECTS_PREFIX).rpartition("/")
        return owner == project if slash else offset == 0
    return False


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Blobs:
    def __init__(self, client: "S3Client", bucket: str, signer: "S3Client | None" = None) -> None:
        self.client = client
        self.bucket = bucket
        self._direct = S3DirectTransfers(client, signer or client, bucket)

    @classmethod
    def from_settings(cls, settings: FilestoreSettings) -> "S3Blobs":
        key_id = settings.s3_access_key_id
        secret = settings.s3_secret_access_key

        def client(
            endpoint: str | None, checksums: Literal["when_supported", "when_required"]
        ) -> "S3Client":
            return boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name=settings.s3_region,
                aws_access_key_id=key_id.get_secret_value() if key_id else None,
                aws_secret_access_key=secret.get_secret_value() if secret else None,
                config=Config(
                    retries={"max_attempts": 5, "mode": "standard"},
                    signature_version="s3v4",
                    max_pool_connections=32,
                    request_checksum_calculation=checksums,
                    response_checksum_validation="when_required",
                    # Each part carries a CRC32 that S3 checks and the service checks the
                    # SHA-256 of the whole: a SigV4 hash of every payload (botocore's default
                    # on plain http) would be a third pass over every byte for nothing.
                    s3={"payload_signing_enabled": False},
                ),
            )

        inside = client(settings.s3_endpoint_url, "when_supported")
        # Presigned URLs must demand no checksum of clients, and name the endpoint clients
        # use, which may differ from the service's own (a compose network name inside, a
        # public host name outside).
        public = settings.s3_public_endpoint_url or settings.s3_endpoint_url
        signer = client(public, "when_required")
        return cls(inside, settings.s3_bucket, signer)

    def exists(self, sha256: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=blob_key(sha256))
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return False
            raise
        return True

    def put_pack(self, path: Path, members: list[PackMember], project: str) -> str | None:
        key = f"{PACKS_PREFIX}{project}/{uuid.uuid4()}"  # its bytes are that project's alone
        self.client.upload_file(str(path), self.bucket, key, Config=_TRANSFER)
        return key

    def writer(self, sha256: str | None, size_hint: int | None) -> BlobWriter:
        part_size = part_size_for(size_hint or 0, _MIN_PART)
        if sha256 is None:
            key = f"{OBJECTS_PREFIX}{uuid.uuid4()}"
            return _MultipartWriter(self.client, self.bucket, key, part_size, placed=True)
        return _MultipartWriter(self.client, self.bucket, blob_key(sha256), part_size)

    def read(self, sha256: str) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=blob_key(sha256))["Body"]
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    def read_placed(self, placement: Placement) -> Iterator[bytes]:
        if placement.size == 0:
            return
        last = placement.offset + placement.size - 1
        body = self.client.get_object(
            Bucket=self.bucket, Key=placement.key, Range=f"bytes={placement.offset}-{last}"
        )["Body"]
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    def ready(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) not in ("404", "NoSuchBucket"):
                raise
            self.client.create_bucket(Bucket=self.bucket)
            self.client.put_bucket_lifecycle_configuration(
                Bucket=self.bucket,
                LifecycleConfiguration={
                    "Rules": [
                        {  # a client or service stopped mid-upload leaves its parts behind
                            "ID": "modelcloud-abandoned-parts",
                            "Filter": {"Prefix": ""},
                            "Status": "Enabled",
                            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
                        },
                    ]
                },
            )

    def objects(self) -> Iterator[list[StoredObject]]:
        pages = self.client.get_paginator("list_objects_v2")
        for prefix in (BLOBS_PREFIX, OBJECTS_PREFIX, PACKS_PREFIX):
            for page in pages.paginate(Bucket=self.bucket, Prefix=prefix):
                found = [
                    StoredObject(item["Key"], item["Size"], item["LastModified"])
                    for item in page.get("Contents", [])
                ]
                if found:
                    yield found

    def remove(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # the most one request deletes
            batch = keys[start : start + 1000]
            answer = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
            )
            if errors := answer.get("Errors"):
                raise RuntimeError(f"S3 kept {len(errors)} objects: {errors[0]}")

    def drop_unfinished(self, before: datetime) -> list[str]:
        # The bucket's lifecycle rule does this too, but only on buckets this service created.
        dropped = []
        pages = self.client.get_paginator("list_multipart_uploads")
        for page in pages.paginate(Bucket=self.bucket):
            for upload in page.get("Uploads", []):
                if upload["Initiated"] >= before:
                    continue
                try:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                except ClientError as exc:
                    if _code(exc) not in _MISSING:
                        raise
                    continue
                dropped.append(upload["Key"])
        return dropped

    @property
    def direct(self) -> DirectTransfers | None:
        return self._direct


class S3DirectTransfers:
    def __init__(self, client: "S3Client", signer: "S3Client", bucket: str) -> None:
        self.client = client
        self.signer = signer
        self.bucket = bucket

    def start_upload(self, key: str) -> str:
        return self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key, ChecksumAlgorithm="CRC32"
        )["UploadId"]

    def part_url(self, key: str, multipart_id: str, number: int, crc32: str, expires_s: int) -> str:
        return self.signer.generate_presigned_url(
            "upload_part",
            {
                "Bucket": self.bucket,
                "Key": key,
                "UploadId": multipart_id,
                "PartNumber": number,
                "ChecksumCRC32": crc32,  # signed: S3 takes only bytes with this CRC32
            },
            ExpiresIn=expires_s,
        )

    def finish_upload(
        self, key: str, multipart_id: str, parts: list[tuple[str, str]]
    ) -> FinishedUpload:
        try:
            # Asked first: some servers answer a completion of an unknown upload with a 500.
            self.client.list_parts(Bucket=self.bucket, Key=key, UploadId=multipart_id, MaxParts=1)
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=multipart_id,
                MultipartUpload={
                    "Parts": [
                        {"ETag": etag, "ChecksumCRC32": crc32, "PartNumber": number}
                        for number, (etag, crc32) in enumerate(parts, 1)
                    ]
                },
            )
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise UploadNotFound(key) from None
            if _code(exc) in _REJECTED:
                raise PartsRejected(str(exc)) from None
            raise
        head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        crc32 = head.get("ChecksumCRC32")
        # A composite checksum reads "<base64>-<parts>" on AWS; some servers leave the count off.
        return FinishedUpload(head["ContentLength"], crc32.split("-")[0] if crc32 else None)

    def discard(self, key: str, multipart_id: str | None) -> None:
        if multipart_id is not None:
            try:
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=multipart_id
                )
            except ClientError as exc:
                if _code(exc) not in _MISSING:
                    raise
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def download_url(self, sha256: str, expires_s: int) -> str:
        return self.object_url(blob_key(sha256), expires_s)

    def object_url(self, key: str, expires_s: int) -> str:
        return self.signer.generate_presigned_url(
            "get_object", {"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
        )


class _MultipartWriter:
    """Parts go to S3 while the body still arrives, a few at a time (memory stays at about
    ``part_size`` times the parts in flight); the upload is completed only on commit, so
    unchecked content never becomes visible, and aborted otherwise."""

    def __init__(
        self, client: "S3Client", bucket: str, key: str, part_size: int, *, placed: bool = False
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.key = key
        self.placed = placed  # the key is not the content address: commit answers with it
        self.part_size = part_size
        self.buffer: list[bytes] = []
        self.buffered = 0
        self.multipart_id: str | None = None
        self.parts: list[Future[tuple[str, str]]] = []
        self.pool = ThreadPoolExecutor(_PARTS_IN_FLIGHT, thread_name_prefix="s3-part")

    def write(self, chunk: bytes) -> None:
        # Parts may differ in size (all but the last at least 5 MiB): no slicing, one join.
        self.buffer.append(chunk)
        self.buffered += len(chunk)
        if self.buffered >= self.part_size:
            self._send(self._take())

    def _take(self) -> bytes:
        part = b"".join(self.buffer)
        self.buffer.clear()
        self.buffered = 0
        return part

    def _send(self, part: bytes) -> None:
        if self.multipart_id is None:
            self.multipart_id = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ChecksumAlgorithm="CRC32"
            )["UploadId"]
        in_flight = [p for p in self.parts if not p.done()]
        if len(in_flight) >= _PARTS_IN_FLIGHT:
            in_flight[0].result()
        number = len(self.parts) + 1
        self.parts.append(self.pool.submit(self._upload_part, self.multipart_id, number, part))

    def _upload_part(self, multipart_id: str, number: int, part: bytes) -> tuple[str, str]:
        # The CRC32 is computed here, over the bytes at hand: left to botocore, it would
        # read the part once more through a file object, a slice at a time.
        crc32 = base64.b64encode(zlib.crc32(part).to_bytes(4, "big")).decode()
        answer = self.client.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=multipart_id,
            PartNumber=number,
            Body=part,
            ChecksumCRC32=crc32,
        )
        return answer["ETag"], answer.get("ChecksumCRC32", crc32)

    def commit(self, sha256: str) -> str | None:
        self._complete()
        return self.key if self.placed else None

    def _complete(self) -> None:
        try:
            if self.multipart_id is None:
                self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self._take())
                return
            if self.buffered:
                self._send(self._take())
            sent = [p.result() for p in self.parts]
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.multipart_id,
                MultipartUpload={
                    "Parts": [
                        {"ETag": etag, "ChecksumCRC32": crc32, "PartNumber": number}
                        for number, (etag, crc32) in enumerate(sent, 1)
                    ]
                },
            )
        except BaseException:
            self.abort()
            raise
        finally:
            self.pool.shutdown()

    def abort(self) -> None:
        self._take()
        for part in self.parts:
            part.cancel()
        self.pool.shutdown(wait=True)
        if self.multipart_id is not None:
            try:
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.key, UploadId=self.multipart_id
                )
            except ClientError as exc:
                if _code(exc) not in _MISSING:
                    raise
            self.multipart_id = None
