"""The ``chatwright ingest`` and ``chatwright collections`` commands.

:func:`register` adds them to the CLI's Typer app. Progress goes to standard error (a bar when
it is a terminal), the summary to standard output, each skipped file with its reason to
standard error. ``ingest`` exits 0 when at least one file was read (some may have been
skipped), 1 when none could be, 2 for a mistake in the command.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as Bar
from rich.table import Table
from rich.text import Text

from chatwright._cliutil import ConfigOpt, DataDirOpt, UserOpt, err, handles_errors, out
from chatwright.config import Settings, load_settings
from chatwright.errors import ChatwrightError, UserError
from chatwright.ingest.chunking import DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP
from chatwright.ingest.pipeline import Ingestor, IngestReport, Progress, has_vectors
from chatwright.ingest.ray_engine import RayEngine, import_ray
from chatwright.ingest.web import WebIngest, is_url
from chatwright.retrieval.index import SearchIndex
from chatwright.store import Store, open_store

__all__ = ["collections_app", "register"]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print as JSON.")]
NameArg = Annotated[str, typer.Argument(help="The collection's name.")]

collections_app = typer.Typer(
    help="List, show, describe and delete document collections.", no_args_is_help=True
)


_handles_errors = handles_errors(
    "interrupted (documents already written are kept; run again to resume)"
)


def register(app: typer.Typer) -> None:
    """Add ``ingest`` and the ``collections`` sub-commands to ``app``."""
    app.command("ingest")(ingest)
    app.add_typer(collections_app, name="collections")


@contextmanager
def _store(settings: Settings) -> Iterator[Store]:
    store = open_store(settings)
    try:
        yield store
    finally:
        store.close()


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} GB"


# -- ingest -------------------------------------------------------------------------------
def _embedder(
    settings: Settings, name: str | None, store: Store, owner: str, collection: str
) -> Any:
    """The embedder, or None (keyword search only) with a warning when it cannot load."""
    name = settings.embedder if name is None else name
    if not name or name.lower() == "none":
        return None
    from chatwright.models.embeddings import get_embedder

    try:
        return get_embedder(name, settings)
    except ChatwrightError as e:
        info = store.find_collection(owner, collection)
        if info is not None and has_vectors(store, info):
            raise UserError(
                f"cannot load the embedder {name}: {e.message}",
                hint=(e.hint or "")
                + f"; collection {collection!r} has vectors, so it is not ingested without them",
            ) from None
        err.print(f"[yellow]warning:[/] cannot load the embedder {name}: {e.message}")
        if e.hint:
            err.print(f"[dim]hint:[/] {e.hint}")
        err.print("[yellow]ingesting for keyword search only[/]")
        return None


class _Rates(ProgressColumn):
    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        if elapsed <= 0:
            return Text("")
        chunks = task.fields.get("chunks", 0)
        return Text(
            f"{task.completed / elapsed:.1f} files/s · {chunks} chunks · "
            f"{chunks / elapsed:.0f} chunks/s",
            style="dim",
        )


@_handles_errors
def ingest(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Files, directories (read recursively) or quoted globs; or web page URLs."
        ),
    ],
    collection: Annotated[
        str, typer.Option("--collection", "-C", help="The collection; created if missing.")
    ],
    description: Annotated[
        str | None,
        typer.Option("--description", help="What the collection holds (helps routing)."),
    ] = None,
    sync: Annotated[
        bool,
        typer.Option(
            "--sync", help="Remove documents whose files are gone from the directories given."
        ),
    ] = False,
    max_mb: Annotated[
        float,
        typer.Option("--max-mb", min=0.001, max=1e6, help="Skip files larger than this."),
    ] = 50.0,
    chunk_tokens: Annotated[
        int, typer.Option("--chunk-tokens", min=16, help="Largest chunk, in tokens.")
    ] = DEFAULT_CHUNK_TOKENS,
    overlap: Annotated[
        int, typer.Option("--overlap", min=0, help="Tokens a chunk repeats from the one before.")
    ] = DEFAULT_OVERLAP,
    depth: Annotated[
        int,
        typer.Option(
            "--depth", min=0, max=10, help="URLs: also follow links on the same site, this deep."
        ),
    ] = 0,
    max_pages: Annotated[
        int | None,
        typer.Option(
            "--max-pages",
            min=1,
            help="URLs: at most this many pages \\[default: \\[web] max_pages].",
        ),
    ] = None,
    embedder: Annotated[
        str | None,
        typer.Option(
            "--embedder",
            help="provider:model, or 'none' for keyword search only \\[default: "
            "the embedder setting].",
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="local (threads on this machine) or ray (a Ray Data pipeline; needs "
            'pip install "chatwright[ray]").',
        ),
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="--engine ray: auto (the cluster on this machine) or ray://host:10001 "
            "\\[default: a new local Ray].",
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
) -> None:
    """Ingest documents (txt, md, html, pdf, docx) into a collection; unchanged ones are skipped.

    chatwright ingest docs/ --collection handbook
    chatwright ingest 'notes/**/*.md' report.pdf -C handbook --sync
    chatwright ingest https://example.com/docs/ -C docs --depth 2 --max-pages 100
    chatwright ingest corpus/ -C papers --engine ray --ray-address auto
    """
    settings = load_settings(config, data_dir=data_dir, user=user)
    urls = [p for p in paths if is_url(p)]
    ray = _ray_engine(engine, ray_address, settings, bool(urls))
    if urls and (len(urls) < len(paths) or sync):
        raise UserError(
            "web pages are ingested on their own: without files and without --sync",
            hint="run one `chatwright ingest` for the URLs and another for the files",
        )
    with _store(settings) as store:
        owner = settings.user
        new = store.find_collection(owner, collection) is None
        chosen = _embedder(settings, embedder, store, owner, collection)
        index = SearchIndex.for_store(store, chosen)
        ingestor = Ingestor(
            store,
            index,
            owner,
            max_bytes=int(max_mb * 1024 * 1024),
            chunk_tokens=chunk_tokens,
            overlap=overlap,
        )
        web = (
            WebIngest.from_settings(ingestor, settings.web, depth=depth, max_pages=max_pages)
            if urls
            else None
        )
        try:
            report = _run(ingestor, paths, collection, sync, description or "", web, ray)
        except BaseException:
            if new:
                _drop_if_empty(store, owner, collection)
            raise
        if new and report.read == 0:
            _drop_if_empty(store, owner, collection)
        elif description is not None:
            store.update_collection(owner, collection, description)
    _print_report(report, "pages" if urls else "files")
    for note in web.notes if web is not None else ():
        err.print(f"[yellow]note:[/] {escape(note)}")
    if report.read == 0 and report.removed == 0:
        err.print(f"[bold red]error:[/] no {'page' if urls else 'file'} could be read")
        raise typer.Exit(1)


def _ray_engine(
    engine: str, address: str | None, settings: Settings, urls: bool
) -> RayEngine | None:
    """The Ray engine for ``--engine ray`` (Ray checked up front), None for ``local``."""
    if engine not in ("local", "ray"):
        raise UserError(f"unknown --engine {engine!r}", hint="use --engine local or --engine ray")
    if engine == "local":
        if address is not None:
            raise UserError("--ray-address goes with --engine ray")
        return None
    if urls:
        raise UserError("web pages are ingested by the local engine", hint="leave out --engine ray")
    import_ray()
    return RayEngine(address=address, settings=settings)


def _drop_if_empty(store: Store, owner: str, collection: str) -> None:
    """Remove a collection this command created when nothing went into it: a failed ingest
    leaves no empty collection behind (one that now has documents is kept)."""
    info = store.find_collection(owner, collection)
    if info is not None and info.documents == 0:
        store.delete_collection(owner, collection)


def _columns(unit: str) -> tuple[ProgressColumn, ...]:
    """The progress bar: files done of total, files/s, chunks and chunks/s, elapsed, ETA."""
    return (
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        _Rates(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),  # from the files done so far and their pace
    )


def _run(
    ingestor: Ingestor,
    paths: list[str],
    collection: str,
    sync: bool,
    description: str,
    web: WebIngest | None = None,
    ray: RayEngine | None = None,
) -> IngestReport:
    with Bar(
        *_columns("pages" if web is not None else "files"),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task(f"ingesting into {collection}", total=None, chunks=0)

        def show(event: Progress) -> None:
            bar.update(task, total=event.total, completed=event.done, chunks=event.chunks)

        if web is not None:
            return web.ingest(paths, collection, description=description, progress=show)
        if ray is not None:
            return ray.ingest(
                ingestor, paths, collection, sync=sync, description=description, progress=show
            )
        return ingestor.ingest(paths, collection, sync=sync, description=description, progress=show)


def _print_report(report: IngestReport, unit: str = "files") -> None:
    for skipped in report.skipped:
        # escaped: a reason may name a config section ("[web]"), which is not markup
        err.print(f"[yellow]skipped[/] {escape(skipped.path)}: {escape(skipped.reason)}")
    rate = report.chunks_written / report.seconds if report.seconds > 0 else 0.0
    table = Table(title=f"ingest into {report.collection}", box=None, pad_edge=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    rows = [
        (f"{unit} found", report.files),
        ("added", report.added),
        ("updated", report.updated),
        ("unchanged", report.unchanged),
        ("removed", report.removed),
        ("skipped", len(report.skipped)),
        ("chunks new", report.chunks_added),
        ("chunks reused", report.chunks_reused),
        ("chunks removed", report.chunks_removed),
        ("texts embedded", report.embedded),
        ("read", _size(report.bytes)),
        ("time", f"{report.seconds:.2f} s ({rate:.0f} chunks/s)"),
    ]
    for label, value in rows:
        table.add_row(label, str(value))
    out.print(table)


# -- collections --------------------------------------------------------------------------
@collections_app.command("list")
@_handles_errors
def collections_list(
    as_json: JsonOpt = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
) -> None:
    """List your collections."""
    settings = load_settings(config, data_dir=data_dir, user=user)
    with _store(settings) as store:
        found = store.list_collections(settings.user)
    if as_json:
        rows = [
            {
                "name": c.name,
                "description": c.description,
                "documents": c.documents,
                "chunks": c.chunks,
                "updated_at": c.updated_at,
            }
            for c in found
        ]
        out.file.write(json.dumps(rows, ensure_ascii=False) + "\n")
        return
    if not found:
        err.print("no collections yet · create one with: chatwright ingest PATH -C NAME")
        return
    table = Table("name", "documents", "chunks", "updated", "description", box=None)
    for c in found:
        table.add_row(c.name, str(c.documents), str(c.chunks), _when(c.updated_at), c.description)
    out.print(table)


@collections_app.command("show")
@_handles_errors
def collections_show(
    name: NameArg,
    as_json: JsonOpt = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
) -> None:
    """List a collection's documents."""
    settings = load_settings(config, data_dir=data_dir, user=user)
    with _store(settings) as store:
        info = store.get_collection(settings.user, name)
        docs = store.list_documents(settings.user, name)
    if as_json:
        rows = [
            {
                "id": d.id,
                "source": d.source,
                "title": d.title,
                "chunks": d.chunks,
                "bytes": d.bytes,
                "content_hash": d.content_hash,
                "ingested_at": d.ingested_at,
                **d.metadata,
            }
            for d in docs
        ]
        out.file.write(json.dumps(rows, ensure_ascii=False) + "\n")
        return
    err.print(
        f"[bold]{info.name}[/] · {info.documents} documents · {info.chunks} chunks"
        + (f" · {info.description}" if info.description else "")
    )
    table = Table("source", "title", "chunks", "size", "ingested", box=None)
    for d in docs:
        table.add_row(d.source, d.title or "", str(d.chunks), _size(d.bytes), _when(d.ingested_at))
    out.print(table)


@collections_app.command("describe")
@_handles_errors
def collections_describe(
    name: NameArg,
    text: Annotated[str, typer.Argument(help="What the collection holds (helps routing).")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
) -> None:
    """Set a collection's description."""
    settings = load_settings(config, data_dir=data_dir, user=user)
    with _store(settings) as store:
        info = store.update_collection(settings.user, name, " ".join(text.split()))
    err.print(f"{info.name}: {info.description}")


@collections_app.command("delete")
@_handles_errors
def collections_delete(
    name: NameArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
) -> None:
    """Delete a collection with its documents and their chunks."""
    settings = load_settings(config, data_dir=data_dir, user=user)
    with _store(settings) as store:
        info = store.get_collection(settings.user, name)
        if not yes and not typer.confirm(
            f"delete {info.name} ({info.documents} documents, {info.chunks} chunks)?"
        ):
            err.print("kept")
            raise typer.Exit(1)
        store.delete_collection(settings.user, name)
    err.print(f"deleted {name}")
