"""Web pages into a collection: ``chatwright ingest https://…`` (a page, or a site to a depth).

A page goes through the same pipeline as a file (``pipeline.py``): chunked, embedded, written
in one transaction, under its URL as the document's *source* (what citations show), with the
page's title. What differs is how it is read:

- **Fetched safely** (``chatwright.netguard``): no private, loopback, link-local or metadata
  address unless allow-listed, checked after DNS and on every redirect; bodies streamed and cut
  at ``[web] max_page_mb``; the charset from the headers, else the page's ``<meta>``.
- **Main text only**: trafilatura keeps the article as Markdown (headings become each
  passage's heading path) and drops menus, footers and boilerplate. Plain text and Markdown
  pages are read as they are, PDFs with the PDF loader; other types are skipped with a reason.
- **A site to a depth**: links on the same scheme, host and port, breadth first, at most
  ``max_pages`` pages (the links left over are counted in a note), ``robots.txt`` obeyed (its
  ``Crawl-delay`` too), ``concurrency`` pages fetched at once, and at most that many held in
  memory before they are taken (a window, not a whole level). Pages are fetched in threads; the
  database is written from the calling thread only. Each page (robots.txt too) is bounded by
  ``[web] time_limit_s``, redirects included.
- **Idempotent**: the stored ETag / Last-Modified make the next fetch conditional (a 304 is
  *unchanged*); otherwise the hash of the extracted text decides, so a page whose menu or
  timestamp changed but whose text did not is not re-embedded.

A page that cannot be used (HTTP error, refused address, robots.txt, no text, unsupported type)
is a :class:`~chatwright.ingest.loaders.Skipped` with its reason; its stored version, if any,
stays whole, and nothing is written for it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from urllib.robotparser import RobotFileParser

from chatwright.errors import UserError
from chatwright.ingest.files import Found
from chatwright.ingest.loaders import LoadedDocument, UnreadableFile, parse
from chatwright.ingest.pipeline import Ingestor, IngestReport, IngestRun, Progress
from chatwright.netguard import (
    FetchError,
    NetPolicy,
    Page,
    decode_page,
    extract_main,
    fetch,
    links,
    normalize_url,
    safe_client,
)

if TYPE_CHECKING:
    from chatwright.config import WebSettings
    from chatwright.store.base import CollectionInfo, DocumentInfo

__all__ = ["CrawlLimits", "WebIngest", "is_url"]

_ROBOTS_MAX_BYTES = 512 * 1024
_MAX_CRAWL_DELAY_S = 10.0
_MAX_STORED_LINKS = 2_000  # a page's links kept with it, for crawling it again after a 304
_MAX_FRONTIER = 100_000  # links remembered; past this a site's further links are only counted
_HTML = ("text/html", "application/xhtml+xml", "")
_TEXT = {"text/plain": "page.txt", "text/markdown": "page.md", "text/x-markdown": "page.md"}


def is_url(arg: str) -> bool:
    return arg.strip().lower().startswith(("http://", "https://"))


@dataclass(frozen=True, slots=True)
class CrawlLimits:
    depth: int = 0  # 0: the pages given; 1: and the pages they link to on the same site; ...
    max_pages: int = 50
    max_bytes: int = 10 * 1024 * 1024
    max_redirects: int = 5
    concurrency: int = 2
    time_limit_s: float = 30.0  # one page, redirects included
    respect_robots: bool = True

    @classmethod
    def from_settings(
        cls, web: WebSettings, depth: int = 0, max_pages: int | None = None
    ) -> CrawlLimits:
        if depth < 0:
            raise UserError(f"--depth must be 0 or more, not {depth}")
        return cls(
            depth=depth,
            max_pages=max_pages or web.max_pages,
            max_bytes=int(web.max_page_mb * 1024 * 1024),
            max_redirects=web.max_redirects,
            concurrency=web.concurrency,
            time_limit_s=web.time_limit_s,
            respect_robots=web.respect_robots,
        )


@dataclass(frozen=True, slots=True)
class _Source:
    """Stands for :class:`~chatwright.ingest.files.SourceFile` in the pipeline."""

    path: str  # shown in messages: the URL
    source: str  # the stored name: the URL


@dataclass(slots=True)
class _Visit:
    """What fetching one page gave (made in a worker thread; nothing written yet)."""

    url: str  # as asked for
    page: Page | None = None
    doc: LoadedDocument | None = None
    digest: str = ""
    links: list[str] = field(default_factory=list)
    skip: str | None = None
    note: str | None = None


class WebIngest:
    """Ingests web pages into one owner's collections through ``ingestor``; see the module's
    docstring. ``notes`` holds what the last run wants the user to know beyond its report
    (pages cut at the size limit, links not followed)."""

    def __init__(
        self,
        ingestor: Ingestor,
        *,
        policy: NetPolicy | None = None,
        limits: CrawlLimits | None = None,
        user_agent: str = "chatwright/0.1",
        timeout_s: float = 20.0,
    ) -> None:
        self.ing = ingestor
        self.policy = policy or NetPolicy()
        self.limits = limits or CrawlLimits()
        self.user_agent = user_agent
        self.timeout_s = timeout_s
        self.notes: list[str] = []

    @classmethod
    def from_settings(
        cls, ingestor: Ingestor, web: WebSettings, *, depth: int = 0, max_pages: int | None = None
    ) -> WebIngest:
        return cls(
            ingestor,
            policy=NetPolicy.from_lists(web.allow_hosts, web.allow_networks),
            limits=CrawlLimits.from_settings(web, depth, max_pages),
            user_agent=web.user_agent,
            timeout_s=web.timeout_s,
        )

    def ingest(
        self,
        urls: Iterable[str],
        collection: str,
        *,
        description: str = "",
        progress: Callable[[Progress], None] | None = None,
    ) -> IngestReport:
        """Ingest the pages at ``urls`` (and, to ``limits.depth``, the pages they link to)."""
        start = time.perf_counter()
        starts = list(dict.fromkeys(normalize_url(u) for u in urls))
        store, owner = self.ing.store, self.ing.owner
        info = store.find_collection(owner, collection)
        if info is None:
            info = store.create_collection(owner, collection, description)
        self.ing._check_dim(info)
        self.notes = []
        client = safe_client(self.policy, timeout_s=self.timeout_s, user_agent=self.user_agent)
        try:
            run = _Crawl(self, info, client, progress)
            run.crawl(starts)
        finally:
            client.close()
        run.report.seconds = time.perf_counter() - start
        return run.report


class _Crawl(IngestRun):
    """One call of :meth:`WebIngest.ingest`: the pipeline's run, fed pages instead of files."""

    def __init__(
        self,
        web: WebIngest,
        info: CollectionInfo,
        client: Any,
        progress: Callable[[Progress], None] | None,
    ) -> None:
        super().__init__(web.ing, info, Found(), progress)
        self.web = web
        self.limits = web.limits
        self.client = client
        self.robots: dict[str, RobotFileParser] = {}
        self.pace: dict[str, float] = {}  # origin -> earliest time of its next request
        self.lock = threading.Lock()
        self.stored: set[str] = set()  # final URLs handled in this run
        self.pending = 0
        self.seen: set[str] = set()  # URLs queued or visited
        self.sites: set[str] = set()  # origins crawled: the start pages'
        self.left_over = 0  # links not followed for the page limit

    # -- the crawl (calling thread) ---------------------------------------------------------
    def crawl(self, starts: list[str]) -> None:
        """Breadth first from ``starts``: the pages of one depth fetched in the pool, taken in
        order here, their links (on the start pages' sites) making the next depth."""
        self.seen = set(starts)
        self.sites = {_origin(url) for url in starts}
        self.left_over = 0
        level = list(starts)
        pool = ThreadPoolExecutor(self.limits.concurrency, thread_name_prefix="ingest-web")
        try:
            for depth in range(self.limits.depth + 1):
                room = self.limits.max_pages - self.report.files
                batch, rest = level[:room], level[room:]
                self.left_over += len(rest)
                self.pending = len(batch)
                found: list[str] = []
                for visit in self.fetched(pool, batch):
                    self.pending -= 1
                    self.take(visit)
                    if depth == 0 and visit.page is not None:  # http:// that moved to https://
                        self.sites.add(_origin(visit.page.url))
                    if depth < self.limits.depth:
                        found += self.new_links(visit)
                    if len(self.group) >= 32 or sum(len(p.chunks) for p in self.group) >= 256:
                        self.flush()
                level = found
                if not level:
                    break
        finally:  # stopped (an error, a server job giving way): pages not begun are dropped
            pool.shutdown(wait=True, cancel_futures=True)
        self.flush()
        if self.left_over:
            self.web.notes.append(
                f"stopped at the page limit ({self.limits.max_pages} pages): {self.left_over} "
                "more links on the site were not followed; raise --max-pages (or [web] "
                "max_pages) or lower --depth"
            )

    def fetched(self, pool: ThreadPoolExecutor, urls: list[str]) -> Iterator[_Visit]:
        """The visits of ``urls``, in order, at most ``concurrency`` of them fetching or
        fetched and not yet taken: a page's body is in memory only until it is taken."""
        todo = iter(urls)
        window: deque[Future[_Visit]] = deque(
            pool.submit(self.visit, url) for url in islice(todo, self.limits.concurrency)
        )
        try:
            while window:
                visit = window.popleft().result()
                yield visit  # taken before the next page is asked for
                for url in islice(todo, 1):
                    window.append(pool.submit(self.visit, url))
        finally:  # stopped: the pages begun are waited for (shutdown), the rest never asked
            for future in window:
                future.cancel()

    def new_links(self, visit: _Visit) -> list[str]:
        """The page's links to pages of the start sites not seen yet (a page reached by a
        redirect to another site is read, but that site is not crawled)."""
        found = []
        for link in visit.links:
            if link in self.seen or _origin(link) not in self.sites:
                continue
            if len(self.seen) >= _MAX_FRONTIER:
                self.left_over += 1
                continue
            self.seen.add(link)
            found.append(link)
        return found

    def take(self, visit: _Visit) -> None:
        """Count one visited page and queue it for writing (or mark it unchanged / skipped)."""
        page = visit.page
        final = page.url if page is not None else visit.url
        if final in self.stored:  # two links that redirect to one page
            return
        self.stored.add(final)
        self.report.files += 1
        if visit.note:
            self.web.notes.append(visit.note)
        if visit.skip is not None or page is None:
            self.skip(_Source(visit.url, visit.url), visit.skip or "not fetched")  # type: ignore[arg-type]
            return
        self.report.bytes += len(page.body)
        old = self.existing.get(final)
        same = old is not None and old.metadata.get("settings") == self.ing.settings
        if page.status == 304 or (same and old is not None and old.content_hash == visit.digest):
            self.report.unchanged += 1
            self.tell(final, "unchanged")
            return
        self.prepare(visit, page, old)

    def prepare(self, visit: _Visit, page: Page, old: DocumentInfo | None) -> None:
        """Chunk a new or changed page and queue it for embedding and writing."""
        assert visit.doc is not None
        source = _Source(page.url, page.url)
        try:
            prepared = self.ing.prepare(
                self.info,
                source,  # type: ignore[arg-type]
                page.body,
                visit.digest,
                old,
                doc=visit.doc,
            )
        except UnreadableFile as e:
            self.skip(source, e.message)  # type: ignore[arg-type]
            return
        prepared.extra = {
            "url": page.url,
            "content_type": page.content_type,
            **({"etag": page.etag} if page.etag else {}),
            **({"last_modified": page.last_modified} if page.last_modified else {}),
            # followed again when the page answers 304 Not Modified next time
            **({"links": visit.links[:_MAX_STORED_LINKS]} if visit.links else {}),
        }
        self.group.append(prepared)

    def tell(self, path: Any, status: Any) -> None:
        files = self.report.files
        self.report.files = files + self.pending  # the bar's total: handled and fetching
        try:
            super().tell(path, status)
        finally:
            self.report.files = files

    # -- one page (worker threads; never the database) --------------------------------------
    def visit(self, url: str) -> _Visit:
        visit = _Visit(url)
        try:
            if self.limits.respect_robots and not self.allowed(url):
                visit.skip = (
                    f"robots.txt of {_origin(url)} disallows it for {self.web.user_agent} "
                    "(if the site is yours, set respect_robots = false in [web])"
                )
                return visit
            self.wait_turn(url)
            page = fetch(
                self.client,
                url,
                max_bytes=self.limits.max_bytes,
                max_redirects=self.limits.max_redirects,
                headers=self.conditional(url),
                time_limit_s=self.limits.time_limit_s,
            )
            visit.page = page
            if page.status != 304:
                self.read(visit, page)
            elif (old := self.existing.get(page.url)) is not None:
                visit.links = list(old.metadata.get("links", []))  # unchanged: as stored
        except UserError as e:  # FetchError, BlockedAddress, UnreadableFile, a missing extra
            visit.skip = e.message + (f" ({e.hint})" if e.hint else "")
        except RecursionError:
            visit.skip = "too deeply nested to parse"
        return visit

    def read(self, visit: _Visit, page: Page) -> None:
        """Parse ``page`` into ``visit`` (its document, digest and links)."""
        cut = f"{self.limits.max_bytes / 1024 / 1024:g} MB"
        kind = page.content_type
        if kind in _HTML:
            html = decode_page(page)
            main = extract_main(html, page.url)
            if main is None:
                visit.skip = "no main text found on the page"
                return
            doc = parse("page.md", main.markdown.encode("utf-8"))
            visit.doc = LoadedDocument(main.title or doc.title, doc.sections, "html", None)
            visit.digest = _sha256(f"{visit.doc.title}\n{main.markdown}")
            visit.links = links(html, page.url)
        elif kind in _TEXT:
            text = decode_page(page)
            visit.doc = parse(_TEXT[kind], text.encode("utf-8"))
            visit.digest = _sha256(text)
        elif kind == "application/pdf":
            if page.truncated:
                visit.skip = (
                    f"a PDF larger than the size limit ({cut}); raise [web] max_page_mb to read it"
                )
                return
            visit.doc = parse("page.pdf", page.body)
            visit.digest = hashlib.sha256(page.body).hexdigest()
        else:
            visit.skip = (
                f"unsupported content type {kind!r} (HTML, plain text, Markdown and PDF pages "
                "are read)"
            )
            return
        if page.truncated:
            visit.note = f"{page.url}: cut at the size limit ({cut}); only its start was read"

    def conditional(self, url: str) -> dict[str, str]:
        """If-None-Match / If-Modified-Since from the stored version, when its chunks were
        made with the settings of this run (otherwise it must be read again)."""
        old = self.existing.get(url)
        if old is None or old.metadata.get("settings") != self.ing.settings:
            return {}
        headers = {}
        if old.metadata.get("etag"):
            headers["If-None-Match"] = str(old.metadata["etag"])
        if old.metadata.get("last_modified"):
            headers["If-Modified-Since"] = str(old.metadata["last_modified"])
        return headers

    def allowed(self, url: str) -> bool:
        origin = _origin(url)
        with self.lock:
            robots = self.robots.get(origin)
        if robots is None:
            robots = self.read_robots(origin)
            with self.lock:
                robots = self.robots.setdefault(origin, robots)
        return robots.can_fetch(self.web.user_agent, url)

    def read_robots(self, origin: str) -> RobotFileParser:
        """The site's robots.txt: none (404) allows all; unreadable (401, 403, 5xx) allows
        nothing, as RFC 9309 says."""
        robots = RobotFileParser(origin + "/robots.txt")
        try:
            page = fetch(
                self.client,
                origin + "/robots.txt",
                max_bytes=_ROBOTS_MAX_BYTES,
                time_limit_s=self.limits.time_limit_s,
            )
        except FetchError as e:
            if e.status is not None and 400 <= e.status < 500 and e.status not in (401, 403):
                robots.allow_all = True
            else:
                robots.disallow_all = True
            return robots
        robots.parse(page.body.decode("utf-8", errors="replace").splitlines())
        delay = robots.crawl_delay(self.web.user_agent)
        if delay:
            with self.lock:
                self.pace.setdefault(origin + "#delay", min(float(delay), _MAX_CRAWL_DELAY_S))
        return robots

    def wait_turn(self, url: str) -> None:
        """Sleep until the site's Crawl-delay since the last request to it has passed."""
        origin = _origin(url)
        with self.lock:
            delay = self.pace.get(origin + "#delay", 0.0)
            if not delay:
                return
            now = time.monotonic()
            start = max(now, self.pace.get(origin, now))
            self.pace[origin] = start + delay
        time.sleep(start - now)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
