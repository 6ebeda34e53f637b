"""``chatwright ingest https://…``: web pages into a collection (``chatwright.ingest.web``).

A local site (``web_site.Site`` on 127.0.0.1, allow-listed) serves: articles with links, a
robots.txt, pages in latin-1 and Shift_JIS, a page with an ETag, a PDF, an endless page, a page
with 10,000 links, a 404, a zip. Searches are keyword-only unless a test needs vectors
(``test:hash``, to count what is embedded).
"""

from __future__ import annotations

import itertools
import json
import time

import pytest
from typer.testing import CliRunner

from chatwright.cli import app
from chatwright.ingest.pipeline import Ingestor
from chatwright.ingest.web import CrawlLimits, WebIngest
from chatwright.memory.tokens import ESTIMATE
from chatwright.models.embeddings import get_embedder
from chatwright.netguard import NetPolicy
from chatwright.retrieval.index import SearchIndex
from chatwright.retrieval.rag import retrieve
from test_ingest_loaders import make_pdf
from web_site import Resp, Seen, Site

pytest.importorskip("trafilatura")

OWNER = "local"
LOCAL = NetPolicy.from_lists(["127.0.0.1"])


def article(title: str, *paragraphs: str, links: tuple[str, ...] = ()) -> bytes:
    nav = "".join(f'<a href="{href}">{href}</a> ' for href in links)
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (
        f"<!doctype html><html><head><title>{title} | Example</title></head><body>"
        f"<nav>{nav}</nav><article><h1>{title}</h1>{body}</article>"
        "<footer>Copyright Example Inc. Cookie policy. Imprint.</footer></body></html>"
    ).encode()


COFFEE = (
    "The corner cafe has brewed the best espresso in town since 1999, "
    "from beans grown in the Ethiopian highlands."
)
HOURS = "The cafe opens at seven in the morning and closes at six in the evening on weekdays."
TEA = "Darjeeling tea is picked by hand in the spring, in gardens high on the Himalayan slopes."


def with_etag(body: bytes, etag: str):
    def route(seen: Seen) -> Resp:
        if seen.headers.get("if-none-match") == etag:
            return Resp(status=304, headers={"ETag": etag})
        return Resp(body, headers={"ETag": etag})

    return route


@pytest.fixture
def site():
    routes = {
        "/": Resp(
            article(
                "Coffee",
                COFFEE,
                HOURS,
                links=("/tea", "/private/plans", "http://other.example/", "/tea#top", "/missing"),
            )
        ),
        "/tea": Resp(article("Tea", TEA, links=("/",))),
        "/private/plans": Resp(article("Plans", "Secret plans for world domination, in detail.")),
        "/robots.txt": Resp(b"User-agent: *\nDisallow: /private/\n", content_type="text/plain"),
    }
    with Site(routes) as s:
        yield s


@pytest.fixture
def make(store):
    def make(embedder=None, **limits) -> WebIngest:
        index = SearchIndex.for_store(store, embedder)
        ingestor = Ingestor(store, index, OWNER)
        return WebIngest(ingestor, policy=LOCAL, limits=CrawlLimits(**limits))

    return make


def docs(store, collection="web"):
    return {d.source: d for d in store.list_documents(OWNER, collection)}


def search(store, query, collection="web"):
    info = store.get_collection(OWNER, collection)
    return retrieve(SearchIndex.for_store(store, None), query, [info.namespace], 3, ESTIMATE)


def test_a_page_is_ingested_with_its_url_as_the_citation_source(site, store, make):
    report = make().ingest([site.url("/")], "web")
    assert report.added == 1 and report.skipped == []
    doc = docs(store)[site.url("/")]
    assert doc.title == "Coffee" and doc.metadata["content_type"] == "text/html"
    found = search(store, "when does the cafe open")
    assert found[0].citation.source == site.url("/")
    assert found[0].citation.title == "Coffee"
    text = " ".join(r.passage.text for r in found)
    assert "seven in the morning" in text
    assert "Cookie policy" not in text  # boilerplate dropped by the main-text extraction


def test_a_site_is_crawled_to_a_depth_on_the_same_host_obeying_robots(site, store, make):
    ing = make(depth=1)
    report = ing.ingest([site.url("/")], "web")
    assert set(docs(store)) == {site.url("/"), site.url("/tea")}
    reasons = {s.path: s.reason for s in report.skipped}
    assert "robots.txt" in reasons[site.url("/private/plans")]
    assert "HTTP 404" in reasons[site.url("/missing")]
    assert "/private/plans" not in site.paths()  # never requested
    assert site.paths().count("/tea") == 1  # "/tea#top" is the same page
    assert site.paths().count("/robots.txt") == 1


def test_depth_zero_reads_only_the_page_given(site, store, make):
    make().ingest([site.url("/")], "web")
    assert set(docs(store)) == {site.url("/")}


def test_reingest_is_idempotent_conditional_and_by_content(site, store, make):
    site.routes["/tea"] = with_etag(article("Tea", TEA), '"v1"')
    first = make(embedder=get_embedder("test:hash"), depth=1).ingest([site.url("/")], "web")
    assert first.added == 2 and first.embedded > 0
    before = {s: d.id for s, d in docs(store).items()}
    site.requests.clear()
    again = make(embedder=get_embedder("test:hash"), depth=1).ingest([site.url("/")], "web")
    assert again.unchanged == 2 and again.added == again.updated == 0
    assert again.embedded == 0 and again.chunks_added == 0
    tea = [r for r in site.requests if r.path == "/tea"]
    assert tea[0].headers["if-none-match"] == '"v1"'  # answered 304
    assert {s: d.id for s, d in docs(store).items()} == before
    # A changed page is updated; only its new text is embedded.
    site.routes["/"] = Resp(
        article("Coffee", COFFEE, "Now also open on Saturdays.", links=("/tea",))
    )
    third = make(embedder=get_embedder("test:hash"), depth=1).ingest([site.url("/")], "web")
    assert third.updated == 1 and third.unchanged == 1
    assert "Saturdays" in " ".join(r.passage.text for r in search(store, "saturdays"))


def test_a_304_page_still_leads_to_its_links(site, store, make):
    site.routes["/"] = with_etag(article("Coffee", COFFEE, links=("/tea",)), '"home"')
    make(depth=1).ingest([site.url("/")], "web")
    site.routes["/tea"] = Resp(article("Tea", TEA, "Oolong is half oxidised."))
    report = make(depth=1).ingest([site.url("/")], "web")
    assert report.unchanged == 1 and report.updated == 1


@pytest.mark.parametrize(
    ("charset", "header", "text"),
    [
        ("iso-8859-1", True, "Café crème brûlée à la française, servie chaude à midi."),
        ("shift_jis", False, "東京の喫茶店では、朝七時から美味しいコーヒーを出しています。"),
        ("windows-1252", False, "Crème brûlée “the best” — served warm at noon, with café."),
    ],
)
def test_pages_in_other_charsets_are_decoded(site, store, make, charset, header, text):
    meta = "" if header else f'<meta charset="{charset}">'
    html = (
        f"<html><head>{meta}<title>Menu</title></head><body><article><h1>Menu</h1>"
        f"<p>{text}</p><p>{text}</p></article></body></html>"
    )
    content_type = f"text/html; charset={charset}" if header else "text/html"
    site.routes["/menu"] = Resp(html.encode(charset), content_type=content_type)
    report = make().ingest([site.url("/menu")], "web")
    assert report.added == 1, report.skipped
    stored = store.chunks.last(store.get_collection(OWNER, "web").namespace).text
    assert text in stored


def test_an_endless_page_is_streamed_and_cut(site, store, make):
    def two_gigabytes():
        yield b"<html><head><title>Big</title></head><body><article><h1>Big</h1>"
        paragraph = b"<p>" + b"All work and no play makes a dull page indeed. " * 20 + b"</p>"
        for _ in range(2 * 1024**3 // len(paragraph)):
            yield paragraph

    site.routes["/big"] = Resp(two_gigabytes)
    ing = make(max_bytes=256 * 1024)
    start = time.monotonic()
    report = ing.ingest([site.url("/big")], "web")
    assert report.added == 1 and report.bytes == 256 * 1024
    assert any("cut at the size limit" in n for n in ing.notes)
    assert site.streamed < 64 * 1024**2  # the server stopped when the client hung up
    assert time.monotonic() - start < 60


def test_a_dripping_page_is_skipped_at_the_time_limit_and_the_rest_is_read(site, store, make):
    def drip():
        yield b"<html><body><article><h1>Slow</h1><p>"
        for _ in range(40):  # 8 s at most
            time.sleep(0.2)
            yield b"x"

    site.routes["/slow"] = Resp(drip)
    ing = make(time_limit_s=1.0)
    start = time.monotonic()
    report = ing.ingest([site.url("/slow"), site.url("/tea")], "web")
    assert time.monotonic() - start < 5
    assert report.added == 1 and list(docs(store)) == [site.url("/tea")]
    [skipped] = report.skipped
    assert "took longer than 1 s" in skipped.reason and "time_limit_s" in skipped.reason


def test_a_crawl_holds_at_most_concurrency_pages_not_yet_taken(site, store, make, monkeypatch):
    """Pages are asked for in a window of ``concurrency``, not a whole level at once, so a
    slow writer never has a level's bodies waiting in memory."""
    from chatwright.ingest import web as web_ingest

    site.routes["/many"] = Resp(article("Index", COFFEE, links=tuple(f"/p/{i}" for i in range(12))))
    for i in range(12):
        site.routes[f"/p/{i}"] = Resp(article(f"Page {i}", f"Page number {i} says hello. " + TEA))
    ahead: list[int] = []  # when each page is taken: pages asked for and not yet taken
    original = web_ingest._Crawl.take

    def take(self, visit):
        if "/p/" in visit.url:
            asked = len([p for p in site.paths() if p.startswith("/p/")])
            ahead.append(asked - len(ahead))
            time.sleep(0.1)  # a slow writer: an unbounded pool would run ahead meanwhile
        original(self, visit)

    monkeypatch.setattr(web_ingest._Crawl, "take", take)
    report = make(depth=1, max_pages=13, concurrency=2).ingest([site.url("/many")], "web")
    assert report.added == 13 and len(ahead) == 12
    assert max(ahead) <= 2, ahead


def test_a_site_with_ten_thousand_links_stops_at_the_page_limit(site, store, make):
    site.routes["/many"] = Resp(
        article("Index", COFFEE, links=tuple(f"/p/{i}" for i in range(10_000)))
    )
    for i in range(5):
        site.routes[f"/p/{i}"] = Resp(article(f"Page {i}", f"Page number {i} says hello. " + TEA))
    ing = make(depth=1, max_pages=5)
    report = ing.ingest([site.url("/many")], "web")
    assert report.files == 5 and report.added == 5
    assert len([p for p in site.paths() if p.startswith("/p/")]) == 4
    assert any("page limit (5 pages): 9996 more links" in n for n in ing.notes)


def test_a_pdf_is_read_with_the_pdf_loader(site, store, make):
    pytest.importorskip("pypdf")
    site.routes["/manual.pdf"] = Resp(
        make_pdf(["The espresso machine needs descaling every month."]),
        content_type="application/pdf",
    )
    report = make().ingest([site.url("/manual.pdf")], "web")
    assert report.added == 1, report.skipped
    assert docs(store)[site.url("/manual.pdf")].metadata["format"] == "pdf"
    assert "descaling" in search(store, "descaling")[0].passage.text


def test_unusable_pages_are_skipped_with_a_reason_and_store_nothing(site, store, make):
    site.routes["/data.zip"] = Resp(b"PK\x03\x04", content_type="application/zip")
    site.routes["/empty"] = Resp(b"<html><body></body></html>")
    site.routes["/big.pdf"] = Resp(make_pdf(["x" * 2000]), content_type="application/pdf")
    site.routes["/redirect"] = Resp(status=302, headers={"Location": "http://127.0.0.2:1/"})
    urls = [site.url(p) for p in ("/missing", "/data.zip", "/empty", "/big.pdf", "/redirect")]
    report = make(max_bytes=1000).ingest(urls, "web")
    reasons = [s.reason for s in report.skipped]
    assert report.read == 0 and len(reasons) == 5
    assert "HTTP 404" in reasons[0]
    assert "unsupported content type 'application/zip'" in reasons[1]
    assert "no main text" in reasons[2]
    assert "PDF larger than the size limit" in reasons[3]
    assert "refused to connect to 127.0.0.2" in reasons[4]
    assert docs(store) == {}


def test_a_page_that_fails_later_keeps_its_stored_version(site, store, make):
    make().ingest([site.url("/")], "web")
    before = docs(store)[site.url("/")]
    site.routes["/"] = Resp(b"oops", status=500)
    report = make().ingest([site.url("/")], "web")
    assert "HTTP 500" in report.skipped[0].reason
    after = docs(store)[site.url("/")]
    assert (after.id, after.chunks, after.content_hash) == (
        before.id,
        before.chunks,
        before.content_hash,
    )


def test_without_an_allow_list_a_local_site_is_refused(site, store):
    ingestor = Ingestor(store, SearchIndex.for_store(store, None), OWNER)
    report = WebIngest(ingestor).ingest([site.url("/")], "web")
    assert "refused to connect to 127.0.0.1" in report.skipped[0].reason
    assert site.requests == []


# -- the command -----------------------------------------------------------------------------
def run(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_the_command_ingests_a_site_and_is_idempotent(site, tmp_path):
    (tmp_path / "chatwright.toml").write_text('[web]\nallow_hosts = ["127.0.0.1"]\n')
    base = ("ingest", site.url("/"), "-C", "web", "--embedder", "none")
    result = run(*base, "--depth", "1", "--data-dir", str(tmp_path / "d"))
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "robots.txt" in said and "HTTP 404" in said
    assert "set respect_robots = false in [web]" in said  # not eaten as markup
    shown = run("collections", "show", "web", "--json", "--data-dir", str(tmp_path / "d"))
    sources = {d["source"] for d in json.loads(shown.stdout)}
    assert sources == {site.url("/"), site.url("/tea")}
    again = run(*base, "--depth", "1", "--data-dir", str(tmp_path / "d"))
    assert again.exit_code == 0
    assert [line.split()[-1] for line in again.stdout.splitlines() if "unchanged" in line] == ["2"]


def test_the_command_refuses_a_local_url_without_allow_list_and_keeps_no_collection(site, tmp_path):
    result = run(
        "ingest", site.url("/"), "-C", "web", "--embedder", "none", "--data-dir", str(tmp_path)
    )
    assert result.exit_code == 1
    said = " ".join(result.output.split())
    assert "refused to connect to 127.0.0.1" in said and "the [web] section" in said
    listed = run("collections", "list", "--json", "--data-dir", str(tmp_path))
    assert json.loads(listed.stdout) == []


def test_the_command_refuses_urls_mixed_with_files(site, tmp_path):
    (tmp_path / "a.md").write_text("# A\n\ntext")
    result = run(
        "ingest", site.url("/"), str(tmp_path / "a.md"), "-C", "web", "--data-dir", str(tmp_path)
    )
    assert result.exit_code != 0 and "web pages are ingested on their own" in result.output


def test_a_chat_turn_cites_the_ingested_page(site, store, make):
    from chatwright import Chatbot
    from chatwright.config import Settings

    make(embedder=get_embedder("test:hash")).ingest([site.url("/")], "web")
    bot = Chatbot("test:echo", store=store, settings=Settings(embedder="test:hash"))
    answer = bot.chat("t", "@web when does the cafe open in the morning?")
    assert site.url("/") in [c.source for c in answer.citations]


def test_crawl_delay_is_obeyed(site, store, make):
    site.routes["/robots.txt"] = Resp(b"User-agent: *\nCrawl-delay: 1\n", content_type="text/plain")
    site.routes["/"] = Resp(article("Coffee", COFFEE, links=("/tea", "/tea2")))
    site.routes["/tea2"] = Resp(article("More tea", TEA + " Green tea is steamed."))
    report = make(depth=1, concurrency=4).ingest([site.url("/")], "web")
    assert report.added == 3
    pages = sorted(r.at for r in site.requests if r.path != "/robots.txt")
    assert len(pages) == 3
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(pages))  # 1 s apart, not at once


def test_a_redirect_to_another_site_is_read_but_that_site_is_not_crawled(site, store, make):
    with Site({"/page": Resp(article("Elsewhere", TEA, links=("/deeper",)))}) as other:
        other.routes["/deeper"] = Resp(article("Deeper", COFFEE))
        site.routes["/"] = Resp(article("Coffee", COFFEE, links=("/out",)))
        site.routes["/out"] = Resp(status=302, headers={"Location": other.url("/page")})
        make(depth=3).ingest([site.url("/")], "web")
        assert set(docs(store)) == {site.url("/"), other.url("/page")}
        assert other.paths() == ["/page"]


# -- the HTTP API: web pages as a background job -----------------------------------------------
def api(tmp_path, **web):
    from fastapi.testclient import TestClient

    from chatwright.config import Settings
    from chatwright.server import create_app

    settings = Settings(
        model="test:echo",
        embedder="test:hash",
        data_dir=tmp_path / "data",
        server={"preload": False},
        web=web,
    )
    client = TestClient(create_app(settings), base_url="http://localhost")
    assert client.post("/api/collections", json={"name": "web"}).status_code == 201
    return client


def finished(client, job_id):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_api_ingests_web_pages_in_a_job(site, tmp_path):
    with api(tmp_path, allow_hosts=["127.0.0.1"], max_pages=5) as client:
        sent = client.post(
            "/api/collections/web/urls", json={"urls": [site.url("/")], "depth": 1, "max_pages": 50}
        )
        assert sent.status_code == 202, sent.text
        job = finished(client, sent.json()["job_id"])
        assert job["status"] == "done" and job["report"]["added"] == 2
        reasons = " ".join(e["reason"] for e in job["errors"])
        assert "robots.txt" in reasons and "HTTP 404" in reasons
        listed = client.get("/api/collections/web").json()["document_list"]
        assert {d["source"] for d in listed} == {site.url("/"), site.url("/tea")}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_api_refuses_bad_and_local_urls(site, tmp_path):
    with api(tmp_path) as client:
        bad = client.post("/api/collections/web/urls", json={"urls": ["file:///etc/passwd"]})
        assert bad.status_code == 422 and "not a web address" in bad.text
        assert client.post("/api/collections/web/urls", json={"urls": []}).status_code == 422
        sent = client.post("/api/collections/web/urls", json={"urls": [site.url("/")]})
        job = finished(client, sent.json()["job_id"])
        assert job["status"] == "failed"
        assert "refused to connect to 127.0.0.1" in job["errors"][0]["reason"]
        assert site.requests == []
