"""Blobs in an S3 bucket (AWS, MinIO, Ceph: any S3 endpoint), through boto3.

An upload through the service becomes a multipart upload while its body still arrives:
parts of 8 MiB or more go to S3 a few at a time, each with a CRC32 that S3 checks, and the
upload is completed only once the file store has checked the digest, else aborted, so no
unchecked content becomes visible and no parts are left behind. A pack goes up with boto3's
managed transfer.

Content whose digest is only known once the last byte has arrived streams into an object
of its own under ``objects/`` (S3 cannot rename it afterwards), and a pack of small files is
kept whole under ``packs/``: one PUT instead of one per file. The file store records where
those blobs lie and reads them back as byte ranges.

Direct transfers (presigned URLs) stage the client's bytes under ``incoming/``, read them
back to check the declared SHA-256 (S3-compatible servers differ in which checksums they
enforce, so the service trusts none), then copy them server-side to their content address.
Bucket lifecycle rules drop what a client staged and never completed, and the parts of
any multipart upload left unfinished, after a day.
"""

import base64
import hashlib
import math
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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
    NothingStaged,
    PackMember,
    Placement,
    StagedContent,
    blob_key,
)
from services.filestore.settings import FilestoreSettings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CopySourceTypeDef

_TRANSFER = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20)
_COPY_MAX = 5 << 30  # the most one CopyObject request takes
_MIN_PART = 8 << 20
_MAX_PARTS = 10_000
_PARTS_IN_FLIGHT = 6
STAGING_PREFIX = "incoming/"
OBJECTS_PREFIX = "objects/"
PACKS_PREFIX = "packs/"
_MISSING = ("404", "NoSuchKey", "NotFound", "NoSuchUpload")


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

    def put_pack(self, path: Path, members: list[PackMember]) -> str | None:
        key = f"{PACKS_PREFIX}{uuid.uuid4()}"
        self.client.upload_file(str(path), self.bucket, key, Config=_TRANSFER)
        return key

    def writer(self, sha256: str | None, size_hint: int | None) -> BlobWriter:
        part_size = max(_MIN_PART, math.ceil((size_hint or 0) / (_MAX_PARTS - 1)))
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
                        {
                            "ID": "modelcloud-abandoned-uploads",
                            "Filter": {"Prefix": STAGING_PREFIX},
                            "Status": "Enabled",
                            "Expiration": {"Days": 1},
                        },
                        {  # a service stopped mid-upload leaves its parts behind
                            "ID": "modelcloud-abandoned-parts",
                            "Filter": {"Prefix": ""},
                            "Status": "Enabled",
                            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
                        },
                    ]
                },
            )

    @property
    def direct(self) -> DirectTransfers | None:
        return self._direct


class S3DirectTransfers:
    def __init__(self, client: "S3Client", signer: "S3Client", bucket: str) -> None:
        self.client = client
        self.signer = signer
        self.bucket = bucket

    def start_upload(
        self, staging_key: str, size: int, part_size: int, expires_s: int
    ) -> tuple[str | None, list[str]]:
        where = {"Bucket": self.bucket, "Key": staging_key}
        if size <= part_size:
            url = self.signer.generate_presigned_url("put_object", where, ExpiresIn=expires_s)
            return None, [url]
        multipart_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=staging_key)[
            "UploadId"
        ]
        urls = [
            self.signer.generate_presigned_url(
                "upload_part",
                {**where, "UploadId": multipart_id, "PartNumber": number},
                ExpiresIn=expires_s,
            )
            for number in range(1, math.ceil(size / part_size) + 1)
        ]
        return multipart_id, urls

    def finish_upload(self, staging_key: str, multipart_id: str | None, etags: list[str]) -> None:
        if multipart_id is None:
            return
        parts = [{"ETag": etag, "PartNumber": n} for n, etag in enumerate(etags, 1)]
        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=staging_key,
                UploadId=multipart_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
            )
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise NothingStaged(staging_key) from None
            raise

    def inspect_staged(self, staging_key: str) -> StagedContent:
        sha256 = hashlib.sha256()
        md5 = hashlib.md5(usedforsecurity=False)
        size = 0
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=staging_key)["Body"]
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise NothingStaged(staging_key) from None
            raise
        try:
            for chunk in body.iter_chunks(CHUNK):
                sha256.update(chunk)
                md5.update(chunk)
                size += len(chunk)
        finally:
            body.close()
        return StagedContent(sha256.hexdigest(), md5.hexdigest(), size)

    def promote(self, staging_key: str, sha256: str) -> None:
        target = blob_key(sha256)
        try:
            self.client.head_object(Bucket=self.bucket, Key=target)
        except ClientError as exc:
            if _code(exc) not in _MISSING:
                raise
            source: CopySourceTypeDef = {"Bucket": self.bucket, "Key": staging_key}
            size = self.client.head_object(Bucket=self.bucket, Key=staging_key)["ContentLength"]
            if size <= _COPY_MAX:  # one server-side request
                self.client.copy_object(CopySource=source, Bucket=self.bucket, Key=target)
            else:
                self.client.copy(source, self.bucket, target, Config=_TRANSFER)
        self.discard(staging_key, None)

    def discard(self, staging_key: str, multipart_id: str | None) -> None:
        if multipart_id is not None:
            try:
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=staging_key, UploadId=multipart_id
                )
            except ClientError as exc:
                if _code(exc) not in _MISSING:
                    raise
        self.client.delete_object(Bucket=self.bucket, Key=staging_key)

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
