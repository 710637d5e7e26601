"""Issue 13, item 6: IPv6 addresses that carry a private IPv4 address (NAT64, 6to4,
IPv4-compatible, IPv4-mapped and -translated) are refused as the private address they reach."""

import io
import socket

import pytest

from modelcloud._files import FilePolicy, FileRejected
from modelcloud.data_types import DecodeContext, InvalidValue, file

# Each reaches 127.0.0.1, 10.0.0.1 or the cloud metadata address 169.254.169.254.
CARRYING_PRIVATE = [
    "64:ff9b::7f00:1",  # NAT64 well-known prefix
    "64:ff9b::a9fe:a9fe",
    "64:ff9b:1::808:808",  # local-use NAT64: the site's own translator
    "2002:7f00:1::1",  # 6to4
    "2002:a00:1::",
    "::127.0.0.1",  # IPv4-compatible
    "::a9fe:a9fe",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:0:a00:1",  # IPv4-translated
]
CARRYING_PUBLIC = ["64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8", "2001:4860::8888"]


@pytest.mark.parametrize("address", CARRYING_PRIVATE)
def test_a_url_to_an_address_carrying_a_private_one_is_refused(tmp_path, address):
    context = DecodeContext(FilePolicy(roots=(tmp_path,)), tmp_path / "scratch")
    with pytest.raises(InvalidValue, match="non-public address"):
        file().deserialize(f"http://[{address}]:8001/admin.token", context)


@pytest.mark.parametrize("address", CARRYING_PRIVATE)
def test_a_name_resolving_to_such_an_address_is_refused(monkeypatch, address):
    def resolve(host: str, port: object, *args: object, **kwargs: object) -> list[object]:
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, 80, 0, 0))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    out = io.BytesIO()
    with pytest.raises(FileRejected, match=r"models\.example\.com resolves to a non-public"):
        FilePolicy().download("http://models.example.com/model.pkl", out)
    assert out.getvalue() == b""


@pytest.mark.parametrize("address", CARRYING_PUBLIC)
def test_addresses_carrying_a_public_one_stay_allowed(address):
    FilePolicy().check_address("models.example.com", address)
