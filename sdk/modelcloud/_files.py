"""Where a ``file`` or ``image`` value may come from, and how it is brought in safely.

* local paths only inside the configured roots (the model's own folder by default), so a
  caller cannot read ``/etc/passwd`` through a model;
* http(s) URLs only to public addresses (an SSRF guard checked on every redirect hop and
  again on the address each connection reaches, before a byte of the request is sent,
  which defeats DNS rebinding; no proxy from the environment), with a size cap on the
  decoded body;
* uploaded or downloaded archives for directory inputs unpacked with no path leaving the
  target folder and no links, their size, member count and tar headers bounded before
  anything is written (``_archives``).
"""

import ipaddress
import shutil
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from modelcloud import _archives
from modelcloud._archives import ArchiveLimits, ArchiveRejected

_MAX_REDIRECTS = 5
DEFAULT_ARCHIVE_LIMITS = ArchiveLimits()
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
    archive_limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS  # for folder inputs

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
        if not _public(ip):
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


# IPv6 forms that carry an IPv4 address in their low 32 bits and reach it through a
# translator or a tunnel: `::ffff:0:0:0/96` (IPv4-translated), `::/96` (IPv4-compatible)
# and the NAT64 well-known prefix `64:ff9b::/96`. Python's ``is_global`` judges the IPv6
# prefix only, so `64:ff9b::7f00:1` (127.0.0.1 through NAT64) passed as public.
_LOW_32_BITS = tuple(
    ipaddress.IPv6Network(net) for net in ("::ffff:0:0:0/96", "::/96", "64:ff9b::/96")
)
# Local-use NAT64 (RFC 8215): the site's own translator, private whatever it embeds.
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``ip`` is a public unicast address; an IPv6 address that carries an IPv4
    one (mapped, translated, compatible, NAT64, 6to4) is judged by the IPv4 address it
    reaches, and a Teredo one by both of its IPv4 ends as well."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _LOCAL_NAT64:
            return False
        carried = ip.ipv4_mapped or ip.sixtofour
        if carried is None and any(ip in net for net in _LOW_32_BITS):
            carried = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if carried is not None:
            return _public(carried)
        if ip.teredo is not None and not all(_public(end) for end in ip.teredo):
            return False
    return ip.is_global and not ip.is_multicast


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


def unpack_archive(
    archive: Path, target: Path, limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS
) -> Path:
    """Unpack a .zip or .tar(.gz/.bz2/.xz) into the new folder ``target``; reject escapes,
    links and anything over ``limits`` whole, leaving no ``target`` (see ``_archives``)."""
    try:
        return _archives.unpack_archive(archive, target, limits)
    except ArchiveRejected as exc:
        raise FileRejected(exc.message) from None
