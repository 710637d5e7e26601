"""Where a ``file`` or ``image`` value may come from, and how it is brought in safely.

* local paths only inside the configured roots (the model's own folder by default), so a
  caller cannot read ``/etc/passwd`` through a model;
* http(s) URLs only to public addresses (an SSRF guard checked on every redirect hop and
  again on the address actually connected to, which defeats DNS rebinding), with a size cap;
* uploaded or downloaded archives for directory inputs unpacked with no path leaving the
  target folder and no links.
"""

import ipaddress
import shutil
import socket
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

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
        with httpx.Client(timeout=self.download_timeout_s, follow_redirects=False) as client:
            for _ in range(_MAX_REDIRECTS + 1):
                self._check_url(url)
                with client.stream("GET", url) as response:
                    self._check_peer(url, response)
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("location", ""))
                        continue
                    if response.status_code != 200:
                        raise FileRejected(f"URL answered HTTP {response.status_code}")
                    declared = response.headers.get("content-length")
                    if declared is not None and declared.isdigit() and int(declared) > limit:
                        raise FileRejected(f"URL content is larger than {limit} bytes")
                    received = 0
                    for chunk in response.iter_raw(_CHUNK):
                        received += len(chunk)
                        if received > limit:
                            raise FileRejected(f"URL content is larger than {limit} bytes")
                        out.write(chunk)
                    return
        raise FileRejected(f"URL redirected more than {_MAX_REDIRECTS} times")

    def _check_peer(self, url: str, response: httpx.Response) -> None:
        stream = response.extensions.get("network_stream")
        if stream is None:
            return
        peer = stream.get_extra_info("server_addr")
        if peer:
            self.check_address(urlsplit(url).hostname or "", str(peer[0]))


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
