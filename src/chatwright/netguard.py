"""Reading the web safely: the SSRF guard, the fetch, decoding, and main-text extraction.

Used by ``chatwright ingest https://…`` and by the ``fetch_url`` tool, where a URL may come from
a model that read a hostile page, so no request may reach what only this machine can reach:

- Every connection resolves its host **once** (``getaddrinfo``), refuses it if any address is
  loopback, private, link-local (cloud metadata: ``169.254.169.254``, ``fd00:ec2::254``),
  multicast, reserved, unspecified or otherwise not global — IPv4 inside IPv6 (mapped, 6to4,
  Teredo, NAT64) judged by the IPv4 address — and then connects to **that** address (the TLS
  name and the ``Host`` header stay the URL's): no window for DNS rebinding. Decimal and octal
  forms (``http://2130706433/``) resolve to the address they mean and are judged by it.
- Redirects are followed here, one hop at a time, each hop a new check (at most
  ``max_redirects``); proxies from the environment are ignored (they would be the ones
  connecting).
- ``[web] allow_hosts`` (host names, ``*.example.com``, or addresses) and ``allow_networks``
  (CIDR) let an administrator open what is theirs, e.g. an intranet wiki.
- Bodies are streamed and cut at ``max_bytes``: a 2 GB page costs ``max_bytes`` of memory.
  Only gzip and deflate are asked for and decoded here, the output capped at ``max_bytes`` as it
  is inflated (a 24 KB decompression bomb never grows past the cap); any other
  ``Content-Encoding`` (br, zstd…) is refused.
- A fetch, redirects included, ends within ``time_limit_s``: every socket read, write and
  connect waits at most until that deadline, so a server that sends a byte now and then cannot
  hold it longer.

The extraction (trafilatura, the ``[web]`` extra) keeps a page's main text as Markdown, with its
headings, and drops navigation, footers and boilerplate.
"""

from __future__ import annotations

import codecs
import ipaddress
import re
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit

from chatwright.errors import UserError

__all__ = [
    "BlockedAddress",
    "FetchError",
    "NetPolicy",
    "Page",
    "address_problem",
    "decode_page",
    "extract_main",
    "fetch",
    "links",
    "normalize_url",
    "safe_client",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_REDIRECTS = 5
DEFAULT_TIME_LIMIT_S = 30.0
ACCEPT_ENCODING = "gzip, deflate"  # what _Inflater decodes, under the size cap
USER_AGENT = "chatwright/0.1 (+https://github.com/chatwright)"
_INSTALL_HINT = 'install the [web] extra: pip install "chatwright[web]"'
_ALLOW_HINT = (
    "if this host is yours and meant to be reached, add it to allow_hosts (or its network to "
    "allow_networks) in the [web] section of chatwright.toml"
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class BlockedAddress(UserError):
    """A URL leads to an address that web requests may not reach."""


class FetchError(UserError):
    """A page could not be fetched: refused, unreachable, an HTTP error, too many redirects."""

    def __init__(self, message: str, *, hint: str | None = None, status: int | None = None):
        super().__init__(message, hint=hint)
        self.status = status


# -- the guard -----------------------------------------------------------------------------
def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_problem(ip: IPAddress) -> str | None:
    """Why web requests may not reach ``ip`` (e.g. ``"a loopback address"``), or None."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            problem = address_problem(inner)
            return f"{problem} (inside the IPv6 address)" if problem else None
    checks = (
        ("is_unspecified", "an unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address (where cloud metadata services live)"),
        ("is_multicast", "a multicast address"),
        ("is_private", "a private-network address"),
        ("is_site_local", "a site-local address (fec0::/10, the old IPv6 private range)"),
        ("is_reserved", "a reserved address"),
    )
    for attribute, problem in checks:
        if getattr(ip, attribute, False):  # is_site_local: IPv6 only
            return problem
    if not ip.is_global:
        return "an address that is not publicly routable"
    return None


def _parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    found = []
    for value in values:
        try:
            found.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise UserError(
                f"[web] allow_networks: {value!r} is not a network",
                hint="write networks in CIDR form, e.g. 10.0.0.0/8 or fd00::/8",
            ) from None
    return tuple(found)


@dataclass(frozen=True)
class NetPolicy:
    """Which hosts and networks are opened despite the guard (none by default)."""

    allow_hosts: tuple[str, ...] = ()
    allow_networks: tuple[IPNetwork, ...] = ()
    resolver: Resolver | None = field(default=None, compare=False)  # tests: a fake DNS

    @classmethod
    def from_lists(
        cls,
        allow_hosts: Iterable[str] = (),
        allow_networks: Iterable[str] = (),
        resolver: Resolver | None = None,
    ) -> NetPolicy:
        hosts, networks = [], list(_parse_networks(allow_networks))
        for host in allow_hosts:
            host = host.strip().lower().strip("[]")
            try:
                networks.append(ipaddress.ip_network(host))  # an address: a network of one
            except ValueError:
                hosts.append(host)
        return cls(tuple(hosts), tuple(networks), resolver)

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for allowed in self.allow_hosts:
            if allowed.startswith("*."):
                if host.endswith(allowed[1:]):
                    return True
            elif host == allowed:
                return True
        return False

    def check(self, host: str, ip: IPAddress) -> None:
        """Raise :class:`BlockedAddress` unless ``host`` at ``ip`` may be reached."""
        if self.host_allowed(host) or any(ip in net for net in self.allow_networks):
            return
        problem = address_problem(ip)
        if problem is None:
            return
        shown = host if host == str(ip) else f"{host} ({ip})"
        raise BlockedAddress(f"refused to connect to {shown}: {problem}", hint=_ALLOW_HINT)

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        """The host's addresses, every one of them checked."""
        try:
            ips = [ipaddress.ip_address(host.strip("[]"))]
        except ValueError:
            names = (
                self.resolver(host, port) if self.resolver is not None else _getaddrinfo(host, port)
            )
            ips = [ipaddress.ip_address(name.split("%")[0]) for name in names]
        if not ips:
            raise FetchError(f"cannot resolve the host {host!r}")
        for ip in ips:
            self.check(host, ip)
        return list(dict.fromkeys(ips))


def _getaddrinfo(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise FetchError(
            f"cannot resolve the host {host!r} ({e})", hint="check the URL's spelling"
        ) from None
    return [str(info[4][0]) for info in infos]


# -- the transport: connections go to the checked address ---------------------------------
_clock = threading.local()  # .deadline: time.monotonic() at which this thread's fetch gives up


def _within(timeout: float | None, error: type[Exception]) -> float | None:
    """``timeout`` shortened to what is left before the running fetch's deadline."""
    deadline = getattr(_clock, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the fetch's time limit is over")
    return left if timeout is None else min(timeout, left)


def _deadline_stream(stream: Any) -> Any:
    import httpcore

    class DeadlineStream(httpcore.NetworkStream):  # type: ignore[misc]
        """A socket whose every wait ends by the fetch's deadline (see :func:`fetch`)."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            return self.inner.read(max_bytes, _within(timeout, httpcore.ReadTimeout))  # type: ignore[no-any-return]

        def write(self, buffer: bytes, timeout: float | None = None) -> None:
            self.inner.write(buffer, _within(timeout, httpcore.WriteTimeout))

        def close(self) -> None:
            self.inner.close()

        def start_tls(
            self,
            ssl_context: ssl.SSLContext,
            server_hostname: str | None = None,
            timeout: float | None = None,
        ) -> Any:
            timeout = _within(timeout, httpcore.ConnectTimeout)
            return DeadlineStream(self.inner.start_tls(ssl_context, server_hostname, timeout))

        def get_extra_info(self, info: str) -> Any:
            return self.inner.get_extra_info(info)

    return DeadlineStream(stream)


def _backend(policy: NetPolicy) -> Any:
    import httpcore

    class GuardedBackend(httpcore.SyncBackend):  # type: ignore[misc]
        def connect_tcp(
            self,
            host: str,
            port: int,
            timeout: float | None = None,
            local_address: str | None = None,
            socket_options: Iterable[Any] | None = None,
        ) -> Any:
            error: Exception | None = None
            for ip in policy.resolve(host, port):  # checked here, connected to below
                try:
                    stream = super().connect_tcp(
                        str(ip),
                        port,
                        _within(timeout, httpcore.ConnectTimeout),
                        local_address,
                        socket_options,
                    )
                    return _deadline_stream(stream)
                except httpcore.ConnectError as e:  # try the host's next address
                    error = e
            assert error is not None
            raise error

    return GuardedBackend()


def _transport(policy: NetPolicy, ssl_context: ssl.SSLContext | None) -> Any:
    import httpcore
    import httpx

    class Body(httpx.SyncByteStream):
        """A response body that turns httpcore's errors into :class:`FetchError`."""

        def __init__(self, stream: Any, host: str) -> None:
            self.stream, self.host = stream, host

        def __iter__(self) -> Any:
            try:
                yield from self.stream
            except httpcore.TimeoutException:
                raise FetchError(f"{self.host} stopped sending (timed out)") from None
            except (httpcore.NetworkError, httpcore.ProtocolError) as e:
                raise FetchError(f"{self.host} dropped the connection ({e})") from None

        def close(self) -> None:
            if hasattr(self.stream, "close"):
                self.stream.close()

    class GuardedTransport(httpx.BaseTransport):
        """httpx's own transport, on a connection pool whose sockets go through the guard."""

        def __init__(self) -> None:
            self.pool = httpcore.ConnectionPool(
                ssl_context=ssl_context or httpx.create_ssl_context(),
                network_backend=_backend(policy),
                max_connections=8,
            )

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            core = httpcore.Request(
                method=request.method,
                url=httpcore.URL(
                    scheme=request.url.raw_scheme,
                    host=request.url.raw_host,
                    port=request.url.port,
                    target=request.url.raw_path,
                ),
                headers=request.headers.raw,
                content=request.stream,  # type: ignore[arg-type]
                extensions=request.extensions,
            )
            try:
                response = self.pool.handle_request(core)
            except httpcore.TimeoutException as e:
                raise FetchError(f"timed out reaching {request.url.host} ({e})") from None
            except httpcore.ConnectError as e:
                raise FetchError(f"cannot connect to {request.url.host} ({e})") from None
            except httpcore.ProtocolError as e:
                raise FetchError(f"{request.url.host} broke the HTTP protocol ({e})") from None
            return httpx.Response(
                status_code=response.status,
                headers=response.headers,
                stream=Body(response.stream, str(request.url.host)),
                extensions=response.extensions,
            )

        def close(self) -> None:
            self.pool.close()

    return GuardedTransport()


def _httpx() -> Any:
    try:
        import httpx
    except ImportError:
        raise UserError("reading web pages needs the httpx package", hint=_INSTALL_HINT) from None
    return httpx


def safe_client(
    policy: NetPolicy,
    *,
    timeout_s: float = 20.0,
    user_agent: str = USER_AGENT,
    ssl_context: ssl.SSLContext | None = None,
) -> Any:
    """An ``httpx.Client`` whose every connection passes the guard (redirects not followed:
    :func:`fetch` follows them, checking each). TLS is verified against the URL's host name
    (certifi's roots unless ``ssl_context`` says otherwise), though the socket goes to the
    checked address."""
    httpx = _httpx()
    return httpx.Client(
        transport=_transport(policy, ssl_context),
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(timeout_s),
        headers={"User-Agent": user_agent, "Accept-Encoding": ACCEPT_ENCODING},
    )


# -- the fetch -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Page:
    """What a fetch brought back. ``status`` 304: not modified (``body`` empty)."""

    url: str  # the final URL, after redirects, without its fragment
    status: int
    content_type: str  # lower case, without parameters
    charset: str | None  # from the Content-Type header
    body: bytes
    truncated: bool = False  # the body was longer than max_bytes and was cut there
    etag: str | None = None
    last_modified: str | None = None


def normalize_url(url: str) -> str:
    """``url`` checked (http or https, a host) and without its fragment."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise FetchError(f"{url!r} is not a web address", hint="give an http:// or https:// URL")
    if not parts.hostname:
        raise FetchError(f"{url!r} has no host name", hint="give a URL like https://example.com/")
    if parts.username or parts.password:
        raise FetchError(f"{url!r} holds a user name or password; leave them out of the URL")
    return urldefrag(url)[0]


def fetch(
    client: Any,
    url: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_redirects: int = DEFAULT_MAX_REDIRECTS,
    headers: dict[str, str] | None = None,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
) -> Page:
    """GET ``url`` through ``client`` (:func:`safe_client`), following redirects (each hop
    checked). The body is streamed, decoded (gzip, deflate) and cut after ``max_bytes``; the
    whole fetch, redirects included, ends within ``time_limit_s``. HTTP errors raise
    :class:`FetchError` (with ``status``); a 304 is returned as a :class:`Page`."""
    url = normalize_url(url)
    deadline = time.monotonic() + time_limit_s
    outer = getattr(_clock, "deadline", None)  # a fetch inside a fetch keeps the earlier end
    _clock.deadline = deadline if outer is None else min(outer, deadline)
    try:
        return _follow(client, url, max_bytes, max_redirects, headers or {}, deadline)
    except BlockedAddress:
        raise
    except FetchError as e:
        if time.monotonic() < deadline:
            raise
        raise _too_slow(url, time_limit_s) from e
    finally:
        _clock.deadline = outer


def _too_slow(url: str, time_limit_s: float) -> FetchError:
    return FetchError(
        f"gave up on {url}: it took longer than {time_limit_s:g} s",
        hint="the site is slow or sends its page a trickle at a time; if it is yours and merely "
        "slow, raise time_limit_s in the [web] section of chatwright.toml",
    )


def _follow(
    client: Any,
    url: str,
    max_bytes: int,
    max_redirects: int,
    headers: dict[str, str],
    deadline: float,
) -> Page:
    httpx = _httpx()
    headers = {**headers, "Accept-Encoding": ACCEPT_ENCODING}  # nothing _Inflater cannot cap
    for _ in range(max_redirects + 1):
        try:
            request = client.build_request("GET", url, headers=headers)
        except httpx.InvalidURL as e:
            raise FetchError(f"{url!r} is not a valid URL ({e})") from None
        if time.monotonic() >= deadline:
            raise FetchError(f"out of time before reaching {url}")
        response = client.send(request, stream=True)
        try:
            if response.has_redirect_location:
                url = normalize_url(urljoin(url, response.headers.get("location", "")))
                continue
            return _read(response, url, max_bytes, deadline)
        finally:
            response.close()
    raise FetchError(
        f"more than {max_redirects} redirects from {url}",
        hint="the site redirects in a loop, or give the final URL directly",
    )


def _read(response: Any, url: str, max_bytes: int, deadline: float) -> Page:
    status = response.status_code
    etag = response.headers.get("etag")
    modified = response.headers.get("last-modified")
    if status == 304:
        return Page(url, 304, "", None, b"", etag=etag, last_modified=modified)
    if status >= 400:
        raise FetchError(f"HTTP {status} {response.reason_phrase} for {url}", status=status)
    kind, _, params = response.headers.get("content-type", "").partition(";")
    charset = re.search(r"charset\s*=\s*[\"']?([A-Za-z0-9_.:-]+)", params, re.IGNORECASE)
    inflater = _inflater(response.headers.get("content-encoding", ""), url)
    chunks, size, sent, truncated = [], 0, 0, False
    for raw in response.iter_raw():  # as sent: httpx decodes nothing, _Inflater does (capped)
        if time.monotonic() >= deadline:
            raise FetchError(f"{url} was still sending when time ran out")
        sent += len(raw)
        chunk = raw if inflater is None else inflater.feed(raw, max_bytes - size + 1)
        if size + len(chunk) > max_bytes or sent > max_bytes + _SLACK:
            chunks.append(chunk[: max_bytes - size])
            truncated = True
            break  # the rest is never read: closing the stream drops the connection
        chunks.append(chunk)
        size += len(chunk)
    return Page(
        url,
        status,
        kind.strip().lower(),
        charset.group(1) if charset else None,
        b"".join(chunks),
        truncated,
        etag,
        modified,
    )


_SLACK = 64 * 1024  # compressed bytes read past max_bytes that inflate to (almost) nothing


def _inflater(encoding: str, url: str) -> _Inflater | None:
    codings = [c.strip().lower() for c in encoding.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
        return _Inflater(url, gzip=codings[0] != "deflate")
    raise FetchError(
        f"{url} was sent with Content-Encoding {encoding.strip()!r}, which is not read "
        f"(only {ACCEPT_ENCODING}, what was asked for, is decoded, under the size limit)",
        hint="the server ignores Accept-Encoding; ask its owner to honour it, or fetch the page "
        "another way",
    )


class _Inflater:
    """gzip or deflate, decoded a chunk at a time with the output capped (``max_length``):
    what is not inflated yet stays in ``unconsumed_tail``, never in memory as output."""

    def __init__(self, url: str, *, gzip: bool) -> None:
        self.url, self.gzip = url, gzip
        self.started = False  # deflate: zlib-wrapped, or (first bytes refused) raw
        self.ended = False  # a gzip member ended: what follows may be another, or padding
        self.obj = self._new()

    def _new(self, raw: bool = False) -> Any:
        bits = 16 + zlib.MAX_WBITS if self.gzip else -zlib.MAX_WBITS if raw else zlib.MAX_WBITS
        return zlib.decompressobj(bits)

    def feed(self, data: bytes, limit: int) -> bytes:
        """At most ``limit`` (> 0) bytes inflated from ``data``; the caller stops at the limit."""
        out: list[bytes] = []
        room = limit
        while data and room > 0:
            try:
                piece = self.obj.decompress(data, room)
            except zlib.error as e:
                if not self.gzip and not self.started:  # a server sending raw deflate
                    self.started, self.obj = True, self._new(raw=True)
                    continue
                if self.ended:  # bytes after the last gzip member: ignored
                    break
                raise FetchError(f"the compressed body of {self.url} is corrupt ({e})") from None
            self.started = True
            out.append(piece)
            room -= len(piece)
            if self.obj.eof:
                data, self.ended = self.obj.unused_data, True
                if not self.gzip:
                    break  # deflate has one stream: the rest is padding
                self.obj = self._new()
            else:
                data = self.obj.unconsumed_tail
        return b"".join(out)


# -- decoding and extraction ---------------------------------------------------------------
_META_CHARSET = re.compile(
    rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE
)
_XML_ENCODING = re.compile(rb"""^<\?xml[^>]+encoding\s*=\s*["']([A-Za-z0-9_.:-]+)""")


def _codec(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def decode_page(page: Page) -> str:
    """The page's text: the charset of the Content-Type header, else a byte-order mark, else
    the document's own ``<meta charset>`` / XML declaration, else UTF-8 if it is valid, else
    detected (charset-normalizer)."""
    data = page.body
    for bom, codec in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            return data.decode(codec, errors="replace")
    head = data[:4096]
    found = _META_CHARSET.search(head) or _XML_ENCODING.search(head)
    declared = _codec(page.charset) or _codec(found.group(1).decode("ascii") if found else None)
    if declared is not None:
        return data.decode(declared, errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        from charset_normalizer import from_bytes

        best = from_bytes(data[:200_000]).best()
        if best is not None:
            return data.decode(best.encoding, errors="replace")
    except ImportError:
        pass
    return data.decode("utf-8", errors="replace")


# trafilatura's Markdown escapes literal punctuation (``send\_email``): noise for search and
# for a model reading the page, so it is undone (headings stay ``#`` lines).
_ESCAPED = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|<>~])")


@dataclass(frozen=True, slots=True)
class MainText:
    title: str
    markdown: str  # headings kept as ``#`` lines


def extract_main(html: str, url: str) -> MainText | None:
    """The page's main text as Markdown (trafilatura), or None when it has none."""
    try:
        import trafilatura
    except ImportError:
        raise UserError(
            "extracting the text of web pages needs the trafilatura package", hint=_INSTALL_HINT
        ) from None
    doc = trafilatura.bare_extraction(
        html,
        url=url,
        include_formatting=True,
        include_tables=True,
        include_comments=False,
        favor_recall=True,
        with_metadata=True,
    )
    text = (getattr(doc, "text", None) or "").strip() if doc is not None else ""
    if not text:
        return None
    title = " ".join((getattr(doc, "title", None) or "").split())
    return MainText(title, _ESCAPED.sub(r"\1", text))


def links(html: str, base: str) -> list[str]:
    """The page's ``<a href>`` targets on the same site (scheme, host and port as ``base``),
    absolute and without fragments, each once, in order."""
    from lxml import html as lxml_html

    try:
        tree = lxml_html.fromstring(re.sub(r"^\s*<\?xml[^>]*\?>", "", html))
    except Exception:  # an empty or broken document has no links
        return []
    origin = _origin(base)
    found: dict[str, None] = {}
    for element in tree.iter("a"):
        href = (element.get("href") or "").strip()
        if not href or href.startswith(("#", "mailto:", "javascript:", "tel:")):
            continue
        target = urldefrag(urljoin(base, href))[0]
        if _origin(target) == origin:
            found.setdefault(target, None)
    return list(found)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port
