"""The SSRF guard (``chatwright.netguard``): no request reaches a private, loopback,
link-local, metadata or otherwise non-public address unless ``[web]`` allow-lists it; checked
after DNS resolution, on the address then connected to, and on every redirect.

Every server here is local, so the positive cases allow-list 127.0.0.1 (or 127.0.0.2)
explicitly, and each refusal is checked to have sent the server nothing.
"""

from __future__ import annotations

import ipaddress
import ssl
import threading
import time
import tracemalloc
import zlib

import pytest

from chatwright.config import Settings
from chatwright.errors import ConfigError, UserError
from chatwright.netguard import (
    BlockedAddress,
    FetchError,
    NetPolicy,
    address_problem,
    fetch,
    safe_client,
)
from web_site import Resp, Site

pytest.importorskip("httpx")

LOCAL = NetPolicy.from_lists(["127.0.0.1"])


@pytest.fixture
def site():
    with Site({"/": Resp(b"<h1>hello</h1>")}) as s:
        yield s


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # AWS, GCP, Azure metadata
        "100.100.100.200",  # Alibaba metadata (shared address space)
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "fec0::1",  # site-local (deprecated, still routed as private by some networks)
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:169.254.169.254",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    ],
)
def test_non_public_addresses_are_refused(address):
    assert address_problem(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_pass(address):
    assert address_problem(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:{port}/", "127.0.0.1: a loopback address"),
        ("http://localhost:{port}/", "localhost (127.0.0.1)"),
        ("http://[::1]:{port}/", "::1: a loopback address"),
        ("http://0.0.0.0:{port}/", "0.0.0.0: an unspecified address"),
        ("http://2130706433:{port}/", "2130706433 (127.0.0.1)"),  # decimal form
        ("http://0x7f000001:{port}/", "(127.0.0.1)"),  # hexadecimal form
        ("http://[::ffff:127.0.0.1]:{port}/", "inside the IPv6 address"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ],
)
def test_without_an_allow_list_local_urls_are_refused_before_any_request(site, url, shown):
    with safe_client(NetPolicy()) as client, pytest.raises(BlockedAddress) as e:
        fetch(client, url.format(port=site.port))
    assert "refused to connect to" in e.value.message and shown in e.value.message
    assert "allow_hosts" in e.value.hint
    assert site.requests == []


def test_octal_address_is_refused(site):
    with safe_client(NetPolicy()) as client, pytest.raises(UserError):
        fetch(client, f"http://0177.0.0.1:{site.port}/")
    assert site.requests == []


def test_allow_listed_address_is_fetched(site):
    with safe_client(LOCAL) as client:
        page = fetch(client, site.url("/"))
    assert page.status == 200 and page.body == b"<h1>hello</h1>"
    assert page.content_type == "text/html" and page.charset == "utf-8"


def test_allow_listed_network_and_host_name():
    with Site({"/": Resp(b"ok")}, host="127.0.0.2") as s:
        policy = NetPolicy.from_lists(allow_networks=["127.0.0.0/30"])
        with safe_client(policy) as client:
            assert fetch(client, s.url()).body == b"ok"
        other = NetPolicy.from_lists(["127.0.0.1"])  # 127.0.0.1 is not 127.0.0.2
        with safe_client(other) as client, pytest.raises(BlockedAddress):
            fetch(client, s.url())


def test_a_redirect_to_a_local_address_is_refused():
    """An allowed site (127.0.0.2) redirecting to one that is not (127.0.0.1): refused at the
    second hop, which never receives a request."""
    with Site({"/secret": Resp(b"the secret")}) as inner:
        outer_routes = {"/go": Resp(status=302, headers={"Location": inner.url("/secret")})}
        with Site(outer_routes, host="127.0.0.2") as outer:
            policy = NetPolicy.from_lists(allow_networks=["127.0.0.2/32"])
            with safe_client(policy) as client, pytest.raises(BlockedAddress) as e:
                fetch(client, outer.url("/go"))
        assert "127.0.0.1" in e.value.message
        assert outer.paths() == ["/go"] and inner.requests == []


def test_redirects_are_followed_and_bounded(site):
    site.routes["/a"] = Resp(status=301, headers={"Location": "/b"})
    site.routes["/b"] = Resp(status=302, headers={"Location": site.url("/")})
    site.routes["/loop"] = Resp(status=302, headers={"Location": "/loop"})
    with safe_client(LOCAL) as client:
        page = fetch(client, site.url("/a"))
        assert page.url == site.url("/") and page.body == b"<h1>hello</h1>"
        with pytest.raises(FetchError, match="more than 3 redirects"):
            fetch(client, site.url("/loop"), max_redirects=3)
    assert site.paths().count("/loop") == 4


def test_redirect_to_another_scheme_is_refused(site):
    site.routes["/file"] = Resp(status=302, headers={"Location": "file:///etc/passwd"})
    with safe_client(LOCAL) as client, pytest.raises(FetchError, match="not a web address"):
        fetch(client, site.url("/file"))


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/", "gopher://x/", "http://user:pw@x.com/"]
)
def test_only_plain_web_urls(url):
    with safe_client(NetPolicy()) as client, pytest.raises(FetchError):
        fetch(client, url)


def test_the_resolved_address_is_checked_and_connected_to(site):
    """A name is resolved once, by the guard; the connection goes to that address, with the
    name in the Host header (no second lookup that a rebinding DNS could answer otherwise)."""
    calls: list[str] = []

    def dns(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    with safe_client(NetPolicy.from_lists(allow_networks=["127.0.0.1/32"], resolver=dns)) as c:
        page = fetch(c, f"http://wiki.internal.test:{site.port}/")
    assert page.body == b"<h1>hello</h1>"
    assert calls == ["wiki.internal.test"]
    assert site.requests[0].headers["host"] == f"wiki.internal.test:{site.port}"
    with safe_client(NetPolicy(resolver=dns)) as c, pytest.raises(BlockedAddress) as e:
        fetch(c, f"http://wiki.internal.test:{site.port}/")
    assert "wiki.internal.test (127.0.0.1)" in e.value.message


def test_a_name_with_any_private_address_is_refused(site):
    def dns(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.0.0.7"]

    with safe_client(NetPolicy(resolver=dns)) as c, pytest.raises(BlockedAddress) as e:
        fetch(c, "http://mixed.test/")
    assert "10.0.0.7" in e.value.message


def test_allow_hosts_by_name_and_wildcard():
    policy = NetPolicy.from_lists(["wiki.corp", "*.intra.example"])
    assert policy.host_allowed("wiki.corp") and policy.host_allowed("a.b.intra.example")
    assert not policy.host_allowed("evilwiki.corp") and not policy.host_allowed("intra.example.com")


def test_proxies_from_the_environment_are_not_used(site, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    with safe_client(LOCAL) as client:
        assert fetch(client, site.url("/")).status == 200


def test_bodies_are_streamed_and_cut(site):
    def endless():
        while True:
            yield b"x" * 65536

    site.routes["/huge"] = Resp(endless, content_type="text/plain")
    start = time.monotonic()
    with safe_client(LOCAL) as client:
        page = fetch(client, site.url("/huge"), max_bytes=1_000_000)
    assert page.truncated and len(page.body) == 1_000_000
    assert time.monotonic() - start < 10


def test_http_errors_say_what_happened(site):
    with safe_client(LOCAL) as client, pytest.raises(FetchError) as e:
        fetch(client, site.url("/missing"))
    assert e.value.status == 404 and "HTTP 404" in e.value.message


def test_bad_allow_networks_are_config_errors():
    with pytest.raises(UserError, match="not a network"):
        NetPolicy.from_lists(allow_networks=["10.0.0.0/33"])
    from chatwright.config import load_settings

    with pytest.raises(ConfigError, match="allow_networks"):
        load_settings(web={"allow_networks": ["nonsense"]})
    assert Settings().web.allow_hosts == [] and Settings().web.allow_networks == []


def test_https_goes_to_the_checked_address_and_verifies_the_url_name():
    """The socket goes to the address the guard checked; TLS (SNI and the certificate check)
    and the Host header still use the URL's name."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("shop.example").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    policy = NetPolicy.from_lists(
        allow_networks=["127.0.0.1/32"], resolver=lambda host, port: ["127.0.0.1"]
    )
    with Site({"/": Resp(b"secure")}, tls=server_tls) as s:
        with safe_client(policy, ssl_context=client_tls) as client:
            assert fetch(client, f"https://shop.example:{s.port}/").body == b"secure"
            assert s.requests[0].headers["host"] == f"shop.example:{s.port}"
            with pytest.raises(FetchError, match=r"cannot connect to other\.example"):
                fetch(client, f"https://other.example:{s.port}/")  # not the certificate's name
        unlisted = NetPolicy(resolver=policy.resolver)
        with safe_client(unlisted, ssl_context=client_tls) as c, pytest.raises(BlockedAddress):
            fetch(c, f"https://shop.example:{s.port}/")


# -- compressed bodies: decoded here, under the size cap ----------------------------------------
def gzip_bomb(megabytes: int) -> bytes:
    """``megabytes`` MB of zeros in gzip: about 1 KB per MB."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1024 * 1024)
    return b"".join(packer.compress(zeros) for _ in range(megabytes)) + packer.flush()


def zstd_bomb(blocks: int) -> bytes:
    """A zstd frame of ``blocks`` RLE blocks of 128 KB each, 4 bytes apiece (RFC 8878)."""
    frame = bytearray(b"\x28\xb5\x2f\xfd\x00\x38")  # magic; no size; 128 KB window
    for i in range(blocks):
        frame += ((131072 << 3) | (1 << 1) | (i == blocks - 1)).to_bytes(3, "little") + b"x"
    return bytes(frame)


def test_a_gzip_bomb_is_inflated_only_up_to_the_cap(site):
    bomb = gzip_bomb(200)  # 200 MB from about 200 KB
    site.routes["/bomb"] = Resp(  # streamed: the server hangs up quietly when the client does
        lambda: iter([bomb]), content_type="text/plain", headers={"Content-Encoding": "gzip"}
    )
    tracemalloc.start()
    try:
        with safe_client(LOCAL) as client:
            page = fetch(client, site.url("/bomb"), max_bytes=1_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert page.truncated and len(page.body) == 1_000_000 and page.body == bytes(1_000_000)
    assert peak < 8 * 1024 * 1024, f"{peak / 1024**2:.0f} MB at the peak"  # not 64 MB a chunk
    assert site.requests[0].headers["accept-encoding"] == "gzip, deflate"


@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "deflate", "raw-deflate", "identity"])
def test_gzip_and_deflate_pages_are_decoded(site, coding):
    text = "<h1>café</h1>" + "<p>Espresso is brewed under pressure.</p>" * 500
    data = text.encode()
    wbits = {"gzip": 31, "x-gzip": 31, "deflate": 15, "raw-deflate": -15}.get(coding)
    if wbits is not None:
        packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
        data = packer.compress(data) + packer.flush()
    header = "deflate" if coding == "raw-deflate" else coding
    site.routes["/page"] = Resp(data, headers={"Content-Encoding": header})
    with safe_client(LOCAL) as client:
        page = fetch(client, site.url("/page"))
    assert page.body.decode() == text and not page.truncated


def test_two_gzip_members_are_read_and_a_corrupt_body_is_an_error(site):
    two = zlib.compress(b"first ", wbits=31) + zlib.compress(b"second", wbits=31)
    site.routes["/two"] = Resp(two, content_type="text/plain", headers={"Content-Encoding": "gzip"})
    site.routes["/bad"] = Resp(b"not gzip at all", headers={"Content-Encoding": "gzip"})
    with safe_client(LOCAL) as client:
        assert fetch(client, site.url("/two")).body == b"first second"
        with pytest.raises(FetchError, match=r"compressed body of .* is corrupt"):
            fetch(client, site.url("/bad"))


@pytest.mark.parametrize(
    ("coding", "body"),
    [("zstd", zstd_bomb(800)), ("br", b"\x1b\x03\x00\x00"), ("gzip, gzip", b"")],
)
def test_other_content_encodings_are_refused_unread(site, coding, body):
    """A server that ignores Accept-Encoding: zstd (here 100 MB from 3 KB), brotli, or gzip
    twice is refused, not decoded without a cap (httpx would decode zstd and br itself)."""
    site.routes["/packed"] = Resp(body, headers={"Content-Encoding": coding})
    with safe_client(LOCAL) as client, pytest.raises(FetchError) as e:
        fetch(client, site.url("/packed"))
    assert f"Content-Encoding {coding!r}, which is not read" in e.value.message
    assert "Accept-Encoding" in e.value.hint


# -- the time limit: a fetch ends, however slowly the server sends --------------------------------
def drip(every_s: float, hung_up: threading.Event | None = None):
    """A body that never ends: one byte every ``every_s`` seconds (each read is quick)."""

    def body():
        try:
            yield b"<html><body><p>"
            while True:
                time.sleep(every_s)
                yield b"x"
        finally:  # the client hung up (the write failed) or the server closed
            if hung_up is not None:
                hung_up.set()

    return body


def test_a_dripping_server_cannot_hold_a_fetch_past_its_time_limit(site):
    site.routes["/drip"] = Resp(drip(0.2), content_type="text/plain")
    start = time.monotonic()
    with safe_client(LOCAL, timeout_s=20) as client, pytest.raises(FetchError) as e:
        fetch(client, site.url("/drip"), time_limit_s=1.5)
    took = time.monotonic() - start
    assert 1.4 < took < 4, took
    assert "took longer than 1.5 s" in e.value.message and "time_limit_s" in e.value.hint


def test_a_stalled_server_is_given_up_on_at_the_time_limit_not_the_read_timeout(site):
    release = threading.Event()

    def stall():
        yield b"<p>a start, then nothing"
        release.wait(30)

    site.routes["/stall"] = Resp(stall)
    start = time.monotonic()
    try:
        with safe_client(LOCAL, timeout_s=20) as client, pytest.raises(FetchError) as e:
            fetch(client, site.url("/stall"), time_limit_s=1)
    finally:
        release.set()
    assert time.monotonic() - start < 3  # not the 20 s the read timeout allows
    assert "took longer than 1 s" in e.value.message


def test_the_time_limit_spans_redirects(site):
    def slow_hop(target: str):
        def route(seen):
            time.sleep(0.5)
            return Resp(status=302, headers={"Location": target})

        return route

    for i in range(4):
        site.routes[f"/r{i}"] = slow_hop(f"/r{i + 1}")
    site.routes["/r4"] = Resp(b"<p>arrived</p>")
    with safe_client(LOCAL, timeout_s=20) as client:
        assert fetch(client, site.url("/r0"), time_limit_s=10).body == b"<p>arrived</p>"
        start = time.monotonic()
        with pytest.raises(FetchError, match=r"took longer than 1\.2 s"):
            fetch(client, site.url("/r0"), time_limit_s=1.2)  # each hop alone is quick enough
        assert time.monotonic() - start < 2.5
