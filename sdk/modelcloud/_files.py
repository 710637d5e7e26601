"""Where a ``file`` or ``image`` value may come from, and how it is brought in safely.

* local paths only inside the configured roots (the model's own folder by default), so a
  caller cannot read ``/etc/passwd`` through a model;
* http(s) URLs only to public addresses (an SSRF guard checked on every redirect hop and
  again on the address each connection reaches, before a byte of the request is sent,
  which defeats DNS rebinding; no proxy from the environment), with a size cap on the
  decoded body;
* uploaded or downloaded archives for directory inputs unpacked with no path leaving the
  target folder and no links.
"""

import ipaddress
import shutil
import socket
import tarfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

_MAX_REDIRECTS = 5
_CHUNK = 1 << 16


class FileRejected(ValueError):
    """A file value that the policy refuses; the message is safe to show to the caller."""


@dataclass(frozen=True)
class FilePolicy:
    roots: tuple[Path, ...] = ()
    allow_private_urls: bool = False
    max_download_bytes: int = 1 << 30
    download_timeout_s: float = 30.0
    extra_allowed_hosts: frozenset[str] = field(default_factory=frozenset)

    def local_path(self, raw: str) -> Path:
        """Resolve ``raw`` and refuse it unless it lies inside one of the roots."""
        if "\x00" in raw:
            raise FileRejected("contains a NUL byte")
        path = Path(raw).expanduser()
        resolved = path.resolve()
        for root in self.roots:
            if resolved.is_relative_to(root.resolve()):
                if not resolved.exists():
                    raise FileRejected(f"no such file: {raw}")
                return resolved
        raise FileRejected("local paths are only accepted inside the model's folder")

    def check_address(self, host: str, address: str) -> None:
        if self.allow_private_urls or host in self.extra_allowed_hosts:
            return
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            raise FileRejected(f"URL host {host} resolves to a non-public address")

    def _check_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise FileRejected("only http and https URLs are accepted")
        host = parts.hostname
        if not host:
            raise FileRejected("URL has no host")
        try:
            infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError) as exc:
            raise FileRejected(f"cannot resolve URL host {host}") from exc
        for info in infos:
            self.check_address(host, str(info[4][0]))

    def download(self, url: str, out: BinaryIO, *, limit: int | None = None) -> None:
        """Stream ``url`` into ``out``, refusing private addresses and oversize bodies."""
        limit = self.max_download_bytes if limit is None else limit
        try:
            self._download(url, out, limit)
        except httpx.HTTPError as exc:
            raise FileRejected(f"could not fetch the URL: {exc}") from None

    def _download(self, url: str, out: BinaryIO, limit: int) -> None:
        client = httpx.Client(
            timeout=self.download_timeout_s,
            follow_redirects=False,
            transport=_checked_transport(self),
            # Ask for the bytes as they are; a server that compresses anyway is decoded below.
            headers={"Accept-Encoding": "identity"},
        )
        with client:
            for _ in range(_MAX_REDIRECTS + 1):
                self._check_url(url)
                with client.stream("GET", url) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("location", ""))
                        continue
                    if response.status_code != 200:
                        raise FileRejected(f"URL answered HTTP {response.status_code}")
                    declared = response.headers.get("content-length")
                    if declared is not None and declared.isdigit() and int(declared) > limit:
                        raise FileRejected(f"URL content is larger than {limit} bytes")
                    received = 0
                    for chunk in response.iter_bytes(_CHUNK):  # decoded: the file itself
                        received += len(chunk)
                        if received > limit:
                            raise FileRejected(f"URL content is larger than {limit} bytes")
                        out.write(chunk)
                    return
        raise FileRejected(f"URL redirected more than {_MAX_REDIRECTS} times")


class _CheckedConnections(httpcore.NetworkBackend):
    """TCP connections that the policy checks on the address actually reached, before the
    request is sent: a name that resolved to a public address for :meth:`_check_url` and to
    a private one a moment later (DNS rebinding) gets nothing through."""

    def __init__(self, policy: FilePolicy) -> None:
        self._policy = policy
        self._tcp = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._tcp.connect_tcp(host, port, timeout, local_address, socket_options)
        try:
            self._policy.check_address(host, str(stream.get_extra_info("server_addr")[0]))
        except BaseException:
            stream.close()
            raise
        return stream

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise FileRejected("only http and https URLs are accepted")

    def sleep(self, seconds: float) -> None:
        self._tcp.sleep(seconds)


def _checked_transport(policy: FilePolicy) -> httpx.HTTPTransport:
    transport = httpx.HTTPTransport(trust_env=False)
    # httpx takes no network backend of its own: its pool is rebuilt around the checked one
    # with the same TLS settings.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        network_backend=_CheckedConnections(policy),
    )
    return transport


def save_upload(source: BinaryIO, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        shutil.copyfileobj(source, out, _CHUNK)
    return target


def safe_name(filename: str | None, fallback: str) -> str:
    """The last path component of an uploaded file name, never a path."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name
    return name if name not in ("", ".", "..") and "\x00" not in name else fallback


def unpack_archive(archive: Path, target: Path) -> Path:
    """Unpack a .zip or .tar(.gz/.bz2/.xz) into ``target``; reject escapes and links whole."""
    target.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _check_member(info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise FileRejected(f"archive member {info.filename} is a symbolic link")
            zf.extractall(target)  # noqa: S202 - every member checked above
        return target
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for member in members:
                _check_member(member.name)
                if not (member.isfile() or member.isdir()):
                    raise FileRejected(f"archive member {member.name} is not a file or folder")
            tf.extractall(target, members=members, filter="data")
        return target
    raise FileRejected("a folder must be given as a .zip or .tar archive")


def _check_member(name: str) -> None:
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or "\x00" in name:
        raise FileRejected(f"archive member {name!r} points outside the folder")
