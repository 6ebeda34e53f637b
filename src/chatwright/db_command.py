"""The ``chatwright db`` commands: which database the settings use (``db info``), and moving a
SQLite install into PostgreSQL (``db migrate``).

:func:`register` adds them to the CLI's Typer app. The work is ``store/transfer.py``'s; this
module only picks the source, draws the progress (standard error, a bar per table when it is a
terminal) and prints the summary (standard output).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bar
from rich.table import Table

from chatwright._cliutil import ConfigOpt, DataDirOpt, err, handles_errors, out
from chatwright.config import Settings, load_settings
from chatwright.errors import UserError
from chatwright.store import open_store
from chatwright.store.transfer import (
    Progress,
    StoreSummary,
    TransferMismatch,
    TransferReport,
    copy_store,
    open_source,
    summarize,
)

__all__ = ["db_app", "register"]

db_app = typer.Typer(
    help="The database: where it is, what it holds; moving it to PostgreSQL.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the ``db`` sub-commands (``info``, ``migrate``) to ``app``."""
    app.add_typer(db_app, name="db")


# -- db info --------------------------------------------------------------------------------
@db_app.command("info")
@handles_errors()
def info(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Show the database the settings use: backend, location, schema, rows per table.

    The location is the SQLite file, or the PostgreSQL URL without its password.
    """
    settings = load_settings(config, data_dir=data_dir)
    path = _sqlite_path(settings)
    if path is not None and not path.exists():
        err.print(f"sqlite · {path} · not created yet (the first turn or ingest makes it)")
        return
    store = open_store(settings)
    try:
        summary = summarize(store)
    finally:
        store.close()
    if as_json:
        out.file.write(json.dumps(asdict(summary)) + "\n")
        return
    _print_summary(summary)


def _print_summary(summary: StoreSummary) -> None:
    out.print(f"backend   {summary.backend}", markup=False)
    out.print(f"location  {summary.location}", markup=False)
    version = f"version {summary.schema_version}"
    if summary.schema_version != summary.latest_version:
        version += f" (this chatwright's is {summary.latest_version})"
    out.print(f"schema    {version}", markup=False)
    table = Table("table", "rows", box=None, pad_edge=False)
    for name, rows in summary.counts.items():
        spaces = "namespace" if summary.namespaces == 1 else "namespaces"
        extra = f" in {summary.namespaces:,} {spaces}" if name == "chunks" else ""
        table.add_row(name, f"{rows:,}{extra}")
    out.print(table)


# -- db migrate -----------------------------------------------------------------------------
@db_app.command("migrate")
@handles_errors("interrupted: nothing was written (the copy's transaction was rolled back)")
def migrate(
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="The PostgreSQL database to fill: postgresql://user:password@host:5432/dbname. "
            "It must be empty (chatwright creates the tables); it needs pgvector.",
            show_default=False,
        ),
    ],
    source: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="The SQLite file to copy \\[default: the settings' database, "
            "<data-dir>/chatwright.db].",
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Copy a SQLite install into an empty PostgreSQL database, then check the copy.

    Copied: threads (messages, traces, summaries, pins), memories, collections
    (documents, chunks, vectors), users and API keys (they keep working), with
    every key and time as stored. Not copied: turn event streams, queued jobs.
    All in one transaction: if anything fails, or a count (per table, chunks per
    namespace) differs from the source's, nothing is kept in PostgreSQL.
    Then set database_url (chatwright.toml) or CHATWRIGHT_DATABASE_URL to it.

    chatwright db migrate --to postgresql://chatwright:secret@db:5432/chatwright
    chatwright db migrate --from old/chatwright.db --to postgresql://localhost/cw
    """
    _check_target(to)
    path = source if source is not None else _settings_source(config, data_dir)
    report = _run_copy(path, to)
    _print_report(report)
    counts = {c.name: c.source for c in report.tables}
    err.print(
        f"copied {counts['threads']:,} threads, {counts['messages']:,} messages and "
        f"{counts['chunks']:,} chunks in {report.seconds:.1f} s; to use it, set "
        f'database_url = "{report.target}" in chatwright.toml (its password is not shown '
        "here), or CHATWRIGHT_DATABASE_URL",
        markup=False,
    )


def _check_target(url: str) -> None:
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in ("postgresql", "postgres"):
        raise UserError(
            "--to must be a PostgreSQL URL",
            hint="e.g. --to postgresql://user:password@localhost:5432/chatwright",
        )


def _sqlite_path(settings: Settings) -> Path | None:
    """The SQLite file the settings use (None: they name PostgreSQL)."""
    url = settings.database_url
    if not url:
        return settings.db_path
    scheme, _, rest = url.partition("://")
    if scheme.lower() != "sqlite":
        return None
    return Path(rest[1:] if rest.startswith("/") else rest) if rest else Path(":memory:")


def _settings_source(config: Path | None, data_dir: Path | None) -> Path:
    settings = load_settings(config, data_dir=data_dir)
    path = _sqlite_path(settings)
    if path is None or path == Path(":memory:"):
        raise UserError(
            "the settings do not name a SQLite database file to copy from",
            hint="name it with --from PATH (e.g. --from ~/.local/share/chatwright/chatwright.db)",
        )
    return path


def _run_copy(path: Path, url: str) -> TransferReport:
    from chatwright.store.postgres import PostgresStore

    sqlite = open_source(path)
    try:
        postgres = PostgresStore(url, max_connections=2)
        try:
            with _progress() as progress:
                return copy_store(sqlite, postgres, progress)
        except TransferMismatch as e:
            _print_report(e.report)
            raise
        finally:
            postgres.close()
    finally:
        sqlite.close()


@contextmanager
def _progress() -> Iterator[Progress]:
    """A bar per table on standard error (nothing when it is not a terminal)."""
    columns = (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Bar(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        tasks: dict[str, TaskID] = {}

        def update(table: str, done: int, total: int) -> None:
            if table not in tasks:
                tasks[table] = bar.add_task(table, total=total)
            bar.update(tasks[table], completed=done)

        yield update


def _print_report(report: TransferReport) -> None:
    table = Table("table", "SQLite", "PostgreSQL", "", box=None, pad_edge=False)
    for count in report.tables:
        mark = "[green]ok[/]" if count.ok else "[bold red]MISMATCH[/]"
        table.add_row(count.name, f"{count.source:,}", f"{count.target:,}", mark)
    wrong = [c for c in report.namespaces if not c.ok]
    mark = "[green]ok[/]" if not wrong else f"[bold red]{len(wrong)} MISMATCHED[/]"
    source = sum(1 for c in report.namespaces if c.source)
    target = sum(1 for c in report.namespaces if c.target)
    table.add_row("namespaces", f"{source:,}", f"{target:,}", mark)
    out.print(table)
    for count in wrong[:20]:
        target = "counter disagrees" if count.target < 0 else f"{count.target:,}"
        out.print(
            f"  {count.name}: {count.source:,} chunks in SQLite, {target} in PostgreSQL",
            markup=False,
        )
