"""The ``chatwright`` command line: chat, ask, threads.

Every command takes ``--model``, ``--data-dir``, ``--config`` and ``--user``; settings also come
from chatwright.toml and CHATWRIGHT_* environment variables. Errors print what went wrong and
how to fix it, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import json
import sys
from collections.abc import Iterator
from contextlib import aclosing, contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from chatwright import __version__, db_command
from chatwright._cliutil import ConfigOpt, DataDirOpt, UserOpt, err, handles_errors, out
from chatwright.bot import Chatbot, clean_memory
from chatwright.config import load_settings
from chatwright.errors import UserError
from chatwright.export import export_thread
from chatwright.ingest.command import register as register_ingest
from chatwright.server import command as server_command
from chatwright.store import Store, open_store
from chatwright.types import (
    Answer,
    ApprovalRequest,
    TextDelta,
    ToolCallEvent,
    ToolResultEvent,
    TurnEnd,
    TurnStart,
)

__all__ = ["app", "main"]

app = typer.Typer(
    name="chatwright",
    help="Stateful chatbots that remember every thread, offline by default.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
threads_app = typer.Typer(
    help="List, show, search, rename, export, import and delete threads.", no_args_is_help=True
)
app.add_typer(threads_app, name="threads")
memory_app = typer.Typer(
    help="What the bot remembers about you across all your threads.", no_args_is_help=True
)
app.add_typer(memory_app, name="memory")
eval_app = typer.Typer(help="Measure retrieval quality on labelled data.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
register_ingest(app)  # chatwright ingest, chatwright collections
server_command.register(app)  # chatwright serve, chatwright users, chatwright keys
db_command.register(app)  # chatwright db info, chatwright db migrate

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Model as provider:name, e.g. local:gemma-3-270m, openai:gpt-4o-mini, "
        "anthropic:claude-sonnet-4-5, ollama:llama3, test:echo (`chatwright models` lists them).",
    ),
]


class Approve(enum.StrEnum):
    ask = "ask"
    yes = "yes"
    no = "no"


ApproveOpt = Annotated[
    Approve,
    typer.Option(
        "--approve",
        help="Tool calls with side effects: ask (on a terminal; elsewhere no), yes, or no.",
    ),
]
ThreadOpt = Annotated[
    str | None,
    typer.Option("--thread", "-t", help="Thread id; an id not seen before starts that thread."),
]


class AnswerMode(enum.StrEnum):
    auto = "auto"
    generate = "generate"
    extract = "extract"


_MAX_ROWS = 1_000_000  # the most rows a listing asks for (larger numbers are refused)

AnswerModeOpt = Annotated[
    AnswerMode | None,
    typer.Option(
        "--answer-mode",
        help="Answers from documents: extract quotes the best sentences with their [n], "
        "generate asks the model, auto picks (default: [knowledge] answer_mode).",
    ),
]


def _bot(
    model: str | None,
    data_dir: Path | None,
    config: Path | None,
    user: str | None,
    answer_mode: AnswerMode | None = None,
) -> Chatbot:
    settings = load_settings(config, model=model, data_dir=data_dir, user=user)
    if answer_mode is not None:  # for this session: --answer-mode over [knowledge] answer_mode
        knowledge = settings.knowledge.model_copy(update={"answer_mode": answer_mode.value})
        settings = settings.model_copy(update={"knowledge": knowledge})
    return Chatbot(settings=settings)


@contextmanager
def _store(
    data_dir: Path | None, config: Path | None, user: str | None
) -> Iterator[tuple[Store, str]]:
    """The store and owner, for commands that need no model."""
    settings = load_settings(config, data_dir=data_dir, user=user)
    store = open_store(settings)
    try:
        yield store, settings.user
    finally:
        store.close()


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


# -- turns --------------------------------------------------------------------------------
async def _stream_turn(
    bot: Chatbot,
    thread_id: str | None,
    text: str,
    label: str = "",
    *,
    approve: str = "ask",
    redo: int | None = None,
) -> Answer | None:
    """Print one streamed turn after ``label``; returns the answer (None if none came).

    ``approve`` decides tool calls that need approval: "ask" (a prompt when on a terminal,
    otherwise no), "yes" or "no". ``redo``: a message seq to fork before, on a new branch:
    an answer to regenerate (``text`` empty) or a message of the user's to resend as ``text``."""
    answer = None
    spinner = err.status("thinking…", spinner="dots") if err.is_terminal else None
    if spinner:
        spinner.start()
    try:
        approver = _cli_approver(approve)
        if redo is None:
            stream = bot.stream(thread_id, text, approver=approver)
        elif not text:
            stream = bot.regenerate_stream(thread_id or "", redo, approver=approver)
        else:
            stream = bot.edit_stream(thread_id or "", redo, text, approver=approver)
        async with aclosing(stream) as events:
            async for event in events:
                if isinstance(event, TurnStart):  # stored; the model is still thinking
                    continue
                if spinner:  # it draws on this line: stop it before printing anything
                    spinner.stop()
                    spinner = None
                if label:
                    out.print(label, end="", style="bold")
                    label = ""
                if isinstance(event, TextDelta):
                    out.file.write(event.text)
                    out.file.flush()
                elif isinstance(event, TurnEnd):
                    answer = event.answer
                else:
                    _print_tool_event(event)
    finally:
        if spinner:
            spinner.stop()
    out.file.write("\n")
    if answer is not None:
        _print_citations(answer)
        if answer.message.metadata.get("stopped"):
            err.print(f"[yellow]stopped:[/] {answer.message.metadata['stopped']}", highlight=False)
    return answer


def _print_tool_event(event: Any) -> None:
    """Tool calls, approvals and results, dim and never read as markup (they are data)."""
    if isinstance(event, ToolCallEvent):
        out.print(f"\n→ {event.call.name}({event.call.arguments})", markup=False, style="dim")
    elif isinstance(event, ApprovalRequest):
        out.print(f"  needs approval: {event.reason}", markup=False, style="yellow")
    elif isinstance(event, ToolResultEvent):
        content = " ".join(event.result.content.split())
        short = content if len(content) <= 200 else content[:200] + "…"
        out.print(f"← {short}", markup=False, style="red" if event.result.is_error else "dim")


def _cli_approver(mode: str) -> Any:
    """Decide calls that need approval: ask on a terminal, else the fixed answer."""
    mode = getattr(mode, "value", mode)

    async def approver(request: ApprovalRequest, tool: Any) -> bool:
        if mode in ("yes", "no"):
            return mode == "yes"
        if not (sys.stdin.isatty() and out.is_terminal):
            err.print(
                f"[yellow]not run:[/] {request.call.name} needs approval and there is no "
                "terminal to ask (pass --approve yes, or list it in \\[tools] auto_approve)",
                highlight=False,
            )
            return False
        question = f"Allow {request.call.name}({request.call.arguments})?"
        return await asyncio.to_thread(typer.confirm, question, default=False)

    return approver


def _print_citations(answer: Answer) -> None:
    for c in answer.citations:
        where = c.title or c.source or c.document_id or "source"
        page = f", page {c.page}" if c.page else ""
        out.print(f"  [{c.index}] {where}{page}", markup=False, style="dim")


def _run_turn(
    bot: Chatbot,
    thread_id: str | None,
    text: str,
    label: str = "",
    approve: str = "ask",
    redo: int | None = None,
) -> Answer | None:
    try:
        return asyncio.run(_stream_turn(bot, thread_id, text, label, approve=approve, redo=redo))
    except KeyboardInterrupt:
        out.file.write("\n")
        err.print("[yellow]answer interrupted[/] (what arrived is kept in the thread)")
        return None


@app.command()
@handles_errors()
def ask(
    text: Annotated[str, typer.Argument(help="The message; '-' reads it from standard input.")],
    thread: ThreadOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
    approve: ApproveOpt = Approve.ask,
    mode: AnswerModeOpt = None,
    model: ModelOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
) -> None:
    """Ask one question and print the answer (for scripts).

    Keep a conversation going across calls with --thread:

        chatwright ask --thread notes "My name is Ada."
        chatwright ask --thread notes "What is my name?"
    """
    if text == "-":
        text = sys.stdin.read()
    with _bot(model, data_dir, config, user, mode) as bot:
        if as_json:
            answer = bot.chat(thread, text, approver=_cli_approver(approve))
            payload = {
                "thread_id": answer.thread_id,
                "seq": answer.seq,
                "answer": answer.text,
                "citations": [c.model_dump(exclude_none=True) for c in answer.citations],
                "trace": answer.trace.model_dump(),
            }
            out.file.write(json.dumps(payload, ensure_ascii=False) + "\n")
            return
        answer = _run_turn(bot, thread, text, approve=approve)
        if answer is None:
            raise typer.Exit(130)
        if thread is None:
            err.print(f"[dim]thread: {answer.thread_id}[/]")


_CHAT_HELP = """\
commands: /help  /thread (show its id)  /new (start a new thread)  /history
          /remember FACT (kept for all your threads)  /context (what the model sees)  /quit
          /retry (answer your last message again)  /edit [N] TEXT (resend message N, default
          your last, as TEXT)  /branches (list them)  /branch N (switch to branch N)
          (/retry and /edit start a branch: the old turns are kept, /branch 0 shows them)
Ctrl-C stops an answer; Ctrl-D or /quit leaves (the thread is kept)."""


@app.command()
@handles_errors()
def chat(
    thread: ThreadOpt = None,
    approve: ApproveOpt = Approve.ask,
    mode: AnswerModeOpt = None,
    model: ModelOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
) -> None:
    """Chat interactively, with streamed answers. Resume a thread with --thread ID."""
    with _bot(model, data_dir, config, user, mode) as bot:
        thread_id = thread or _new_id()
        existing = bot.store.find_thread(bot.owner, thread_id)
        state = "resuming" if existing else "new"
        err.print(
            f"chatwright {__version__} · {bot.model.name} · {state} thread [bold]{thread_id}[/]"
        )
        err.print("[dim]/help for commands · Ctrl-D to quit[/]")
        if existing:
            _show_recent(bot, thread_id)
        _try_readline()
        while True:
            try:
                line = input("you> ")
            except (EOFError, KeyboardInterrupt):
                err.print(f"\nbye · resume with: chatwright chat --thread {thread_id}")
                return
            command = line.strip()
            if not command:
                continue
            if command.startswith("/"):
                thread_id, done = _slash(bot, thread_id, command)
                if done:
                    return
                continue
            try:
                bot.check_message(line)
            except UserError as e:
                err.print(f"[red]{e.message}[/] · {e.hint}")
                continue
            _run_turn(bot, thread_id, line, label="bot> ", approve=approve)
            _title_new_thread(bot, thread_id)


def _title_new_thread(bot: Chatbot, thread_id: str) -> None:
    """After a thread's first answer, its automatic title (titles.py; a user's title stays)."""
    from chatwright.titles import auto_title

    info = bot.store.find_thread(bot.owner, thread_id)
    if info is None or info.message_count > 4:
        return
    with contextlib.suppress(Exception):  # a title is a nicety; auto_title logs its failures
        asyncio.run(auto_title(bot.store, bot.model, bot.owner, thread_id))


def _new_id() -> str:
    import uuid

    return uuid.uuid4().hex[:12]


def _slash(bot: Chatbot, thread_id: str, command: str) -> tuple[str, bool]:
    name = command.split()[0].lower()
    if name in ("/quit", "/exit", "/q"):
        err.print(f"bye · resume with: chatwright chat --thread {thread_id}")
        return thread_id, True
    if name == "/thread":
        err.print(f"thread {thread_id}")
    elif name == "/new":
        thread_id = _new_id()
        err.print(f"new thread {thread_id}")
    elif name == "/history":
        _show_recent(bot, thread_id, limit=1000)
    elif name == "/remember":
        fact = command[len("/remember") :].strip()
        try:
            item = bot.remember(fact)
            err.print(f"remembered #{item.id}: {item.text}")
        except UserError as e:
            err.print(f"[red]{e.message}[/] · {e.hint}")
    elif name in ("/retry", "/edit", "/branches", "/branch"):
        try:
            _branch_command(bot, thread_id, name, command[len(name) :].strip())
        except UserError as e:
            err.print(f"[red]{e.message}[/] · {e.hint}")
    elif name == "/context":
        if bot.store.find_thread(bot.owner, thread_id) is None:
            err.print("nothing yet: the thread starts with your next message")
        else:
            _print_context(bot.preview_context(thread_id))
    else:
        err.print(_CHAT_HELP)
    return thread_id, False


def _branch_command(bot: Chatbot, thread_id: str, name: str, rest: str) -> None:
    """/retry, /edit [N] TEXT, /branches, /branch N (see ``_CHAT_HELP``)."""
    if bot.store.find_thread(bot.owner, thread_id) is None:
        raise UserError("nothing yet: the thread starts with your next message")
    if name == "/branches":
        active = bot.thread(thread_id).branch
        for b in bot.branches(thread_id):
            where = "main" if b.parent is None else f"from {b.parent} after #{b.fork_seq}"
            mark = "*" if b.id == active else " "
            out.print(f"{mark} branch {b.id}: {where}, {b.messages} messages", highlight=False)
        return
    if name == "/branch":
        if not rest.isdigit():
            raise UserError("which branch?", hint="/branch N, with N from /branches (0: main)")
        bot.switch_branch(thread_id, int(rest))
        err.print(f"on branch {rest}")
        _show_recent(bot, thread_id)
        return
    recent = bot.store.recent(bot.owner, thread_id, 100)
    if name == "/retry":
        if recent and recent[-1].message.role == "user":
            raise UserError("your last message has no answer yet", hint="send your next message")
        last = next((m for m in reversed(recent) if m.message.role == "assistant"), None)
        if last is None:
            raise UserError("no answer to retry yet")
        _run_turn(bot, thread_id, "", label="bot> ", redo=last.seq)
        return
    number, _, text = rest.partition(" ")
    if number.lstrip("#").isdigit():
        seq = int(number.lstrip("#"))
    else:
        text = rest
        mine = next((m for m in reversed(recent) if m.message.role == "user"), None)
        if mine is None:
            raise UserError("no message of yours to edit yet")
        seq = mine.seq
    if not text.strip():
        raise UserError("edit it to what?", hint="/edit [N] TEXT")
    _run_turn(bot, thread_id, text.strip(), label="bot> ", redo=seq)


def _show_recent(bot: Chatbot, thread_id: str, limit: int = 6) -> None:
    if bot.store.find_thread(bot.owner, thread_id) is None:
        return
    for stored in bot.store.recent(bot.owner, thread_id, limit):
        _print_message(stored.seq, stored.message)


def _print_message(seq: int, message: Any) -> None:
    label = {"user": "you", "assistant": "bot", "tool": "tool", "system": "system"}[message.role]
    out.print(f"[dim]#{seq}[/] [bold]{label}>[/] ", end="")
    out.print(message.text, markup=False)
    for call in message.tool_calls:
        out.print(f"    → {call.name}({call.arguments})", markup=False, style="dim")
    for result in message.tool_results:
        out.print(f"    ← {result.content[:500]}", markup=False, style="dim")
    if message.metadata.get("interrupted"):
        out.print("    (cut short)", style="dim")


def _try_readline() -> None:
    with contextlib.suppress(ImportError):  # line editing and history for input()
        import readline  # noqa: F401


# -- threads ------------------------------------------------------------------------------
@threads_app.command("list")
@handles_errors()
def threads_list(
    limit: Annotated[int, typer.Option(min=1, max=_MAX_ROWS, help="How many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
) -> None:
    """List threads, most recently active first."""
    with _store(data_dir, config, user) as (store, owner):
        threads = store.list_threads(owner, limit=limit)
    if as_json:
        rows = [
            {
                "id": t.id,
                "title": t.title,
                "messages": t.message_count,
                "created_at": t.created_at,
                "updated_at": t.updated_at,
            }
            for t in threads
        ]
        out.file.write(json.dumps(rows, ensure_ascii=False) + "\n")
        return
    if not threads:
        err.print("no threads yet · start one with: chatwright chat")
        return
    table = Table("id", "title", "messages", "updated", box=None, pad_edge=False)
    for t in threads:
        table.add_row(t.id, t.title or "", str(t.message_count), _when(t.updated_at))
    out.print(table)


@threads_app.command("show")
@handles_errors()
def threads_show(
    thread_id: Annotated[str, typer.Argument(help="The thread's id.")],
    trace: Annotated[bool, typer.Option("--trace", help="Also show each turn's trace.")] = False,
    context: Annotated[
        bool, typer.Option("--context", help="Show what the model would see next, instead.")
    ] = False,
    model: ModelOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
) -> None:
    """Show a thread's whole transcript (or, with --context, what the model would see next)."""
    if context:
        with _bot(model, data_dir, config, user) as bot:
            _print_context(bot.preview_context(thread_id))
        return
    with _store(data_dir, config, user) as (store, owner):
        info = store.get_thread(owner, thread_id)
        err.print(f"[bold]{info.title or info.id}[/] · {info.message_count} messages")
        traces = dict(store.traces(owner, thread_id, limit=10_000)) if trace else {}
        for stored in store.messages(owner, thread_id):
            _print_message(stored.seq, stored.message)
            if stored.seq in traces:
                _print_trace(traces[stored.seq])


def _print_trace(trace: Any) -> None:
    stages = " · ".join(
        f"{s.name} skipped" if s.skipped else f"{s.name} {s.ms:.1f} ms" for s in trace.stages
    )
    out.print(
        f"    trace: {trace.model} · {trace.input_tokens} in / {trace.output_tokens} out tokens"
        f" · {trace.total_ms:.1f} ms · {stages}",
        markup=False,
        style="dim",
    )
    for note in trace.notes:
        out.print(f"    note: {note}", markup=False, style="dim")


def _print_context(context: Any) -> None:
    parts = " · ".join(f"{k} {v}" for k, v in context.tokens.items())
    err.print(
        f"[bold]{context.strategy}[/] strategy · {context.total_tokens} tokens ({parts}) · "
        f"{context.turns_kept} recent turns kept, {context.turns_dropped} dropped"
    )
    for note in context.notes:
        err.print(f"[dim]note: {note}[/]")
    for message in context.messages:
        out.print(f"[bold]── {message.role}[/]")
        out.print(message.text or "(no text)", markup=False)
        for call in message.tool_calls:
            out.print(f"  → {call.name}({call.arguments})", markup=False, style="dim")


@threads_app.command("memory")
@handles_errors()
def threads_memory(
    thread_id: Annotated[str, typer.Argument(help="The thread's id.")],
    strategy: Annotated[
        str, typer.Argument(help="window, tokens, summary, or default (the configured one).")
    ],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
) -> None:
    """Choose how much of this thread the model sees (its memory strategy)."""
    with _bot("test:echo", data_dir, config, user) as bot:
        bot.set_memory_strategy(thread_id, None if strategy == "default" else strategy)
    err.print(f"thread {thread_id}: memory strategy {strategy}")


@threads_app.command("export")
@handles_errors()
def threads_export(
    thread_id: Annotated[str, typer.Argument(help="The thread's id.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="json or markdown.")] = "json",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to a file, not stdout.")
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
) -> None:
    """Export a thread's full transcript as JSON or Markdown."""
    if fmt not in ("json", "markdown", "md"):
        raise UserError(f"unknown format {fmt!r}", hint="use --format json or --format markdown")
    with _store(data_dir, config, user) as (store, owner):
        text = export_thread(store, owner, thread_id, fmt)
    if output is None:
        out.file.write(text if text.endswith("\n") else text + "\n")
    else:
        output.write_text(text, encoding="utf-8")
        err.print(f"wrote {output}")


@threads_app.command("delete")
@handles_errors()
def threads_delete(
    thread_id: Annotated[str, typer.Argument(help="The thread's id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
) -> None:
    """Delete a thread and all its messages."""
    with _store(data_dir, config, user) as (store, owner):
        info = store.get_thread(owner, thread_id)
        if not yes:
            if not sys.stdin.isatty():
                raise UserError("refusing to delete without confirmation", hint="add --yes")
            typer.confirm(f"delete thread {info.id} ({info.message_count} messages)?", abort=True)
        store.delete_thread(owner, thread_id)
    err.print(f"deleted thread {thread_id}")


@threads_app.command("rename")
@handles_errors()
def threads_rename(
    thread_id: Annotated[str, typer.Argument(help="The thread's id.")],
    title: Annotated[str | None, typer.Argument(help="The new title.")] = None,
    auto: Annotated[
        bool, typer.Option("--auto", help="An automatic title (the model's, or key words).")
    ] = False,
    model: ModelOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
) -> None:
    """Rename a thread, or give it an automatic title with --auto."""
    from chatwright.models import get_model
    from chatwright.titles import auto_title

    if (title is None) == (not auto):
        raise UserError("give a title or --auto", hint='chatwright threads rename ID "My title"')
    settings = load_settings(config, model=model, data_dir=data_dir, user=user)
    with _store(data_dir, config, user) as (store, owner):
        if auto:
            chosen = get_model(settings.model, settings)
            info = asyncio.run(auto_title(store, chosen, owner, thread_id)) or store.get_thread(
                owner, thread_id
            )
        else:
            clean = " ".join((title or "").split())
            if not clean:
                raise UserError("the title is blank", hint="give a title with some text")
            info = store.rename_thread(owner, thread_id, clean[:200])
    out.print(info.title or "", markup=False)


@threads_app.command("search")
@handles_errors()
def threads_search(
    query: Annotated[str, typer.Argument(help="Words to look for in titles and messages.")],
    limit: Annotated[int, typer.Option(min=1, max=100, help="How many threads.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
) -> None:
    """Search your threads' titles and messages, best match first."""
    from chatwright.retrieval.thread_search import thread_search

    with _store(data_dir, config, user) as (store, owner):
        hits = thread_search(store).search(owner, query, limit=limit)
    if as_json:
        rows = [
            {"id": h.thread.id, "title": h.thread.title, "seq": h.seq, "snippet": h.snippet}
            for h in hits
        ]
        out.file.write(json.dumps(rows, ensure_ascii=False) + "\n")
        return
    if not hits:
        err.print(f"no thread matches {query!r}", markup=False)
        return
    table = Table("id", "title", "match", box=None, pad_edge=False)
    for h in hits:
        table.add_row(h.thread.id, h.thread.title or "", h.snippet)
    out.print(table)


@threads_app.command("import")
@handles_errors()
def threads_import(
    files: Annotated[
        list[Path], typer.Argument(help="Exports: chatwright JSON, ChatGPT's conversations.json.")
    ],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
) -> None:
    """Import exported threads as new threads (all or none: a bad file stores nothing)."""
    from chatwright.importing import import_threads, parse_export

    parsed = []
    for path in files:
        try:
            parsed += parse_export(path.read_bytes())
        except OSError as e:
            raise UserError(f"cannot read {path}: {e.strerror}", hint="check the path") from None
        except UserError as e:
            raise UserError(f"{path}: {e.message}", hint=e.hint) from None
    settings = load_settings(config, data_dir=data_dir, user=user)
    store = open_store(settings)
    try:  # a user's message no longer than a turn's, as the API's import
        created = import_threads(store, settings.user, parsed, max_chars=settings.max_message_chars)
    finally:
        store.close()
    for info in created:
        out.print(f"{info.id}  {info.title or ''}  ({info.message_count} messages)", markup=False)
    err.print(f"imported {len(created)} thread{'s' if len(created) != 1 else ''}")


# -- user memory --------------------------------------------------------------------------
@memory_app.command("list")
@handles_errors()
def memory_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
) -> None:
    """List what the bot remembers about you."""
    with _store(data_dir, config, user) as (store, owner):
        items = store.list_memories(owner)
    if as_json:
        rows = [
            {"id": m.id, "text": m.text, "updated_at": m.updated_at, "untrusted": m.untrusted}
            for m in items
        ]
        out.file.write(json.dumps(rows, ensure_ascii=False) + "\n")
        return
    if not items:
        err.print(
            'nothing remembered yet · add a fact with: chatwright memory add "I\'m vegetarian"'
        )
    for m in items:
        mark = f"  (unverified: saved with {m.untrusted} in view)" if m.untrusted else ""
        out.print(f"{m.id:>4}  {m.text}{mark}", markup=False)


@memory_app.command("add")
@handles_errors()
def memory_add(
    text: Annotated[str, typer.Argument(help='A short fact, e.g. "I\'m vegetarian".')],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
) -> None:
    """Remember a fact about you, shown to the model in all your threads."""
    with _bot("test:echo", data_dir, config, user) as bot:
        item = bot.remember(text)
    err.print(f"remembered #{item.id}: {item.text}")


@memory_app.command("edit")
@handles_errors()
def memory_edit(
    memory_id: Annotated[int, typer.Argument(help="The id shown by `chatwright memory list`.")],
    text: Annotated[str, typer.Argument(help="The new text.")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
) -> None:
    """Change a remembered fact."""
    with _store(data_dir, config, user) as (store, owner):
        item = store.update_memory(owner, memory_id, clean_memory(text))
    err.print(f"#{item.id}: {item.text}")


@memory_app.command("delete")
@handles_errors()
def memory_delete(
    memory_id: Annotated[int, typer.Argument(help="The id shown by `chatwright memory list`.")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
) -> None:
    """Forget a remembered fact."""
    with _store(data_dir, config, user) as (store, owner):
        store.delete_memory(owner, memory_id)
    err.print(f"forgot #{memory_id}")


# -- routing --------------------------------------------------------------------------------
@app.command()
@handles_errors()
def route(
    question: Annotated[str, typer.Argument(help="The question to route (not answered).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON.")] = False,
    model: ModelOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
) -> None:
    """Show which collections a question would search, with the scores and why."""
    with _bot(model, data_dir, config, user) as bot:  # the llm strategy asks this model
        decision, _, _ = asyncio.run(bot.route(question))
    if as_json:
        out.file.write(json.dumps(decision.to_dict()) + "\n")
        return
    out.print(decision.describe(), markup=False)
    for note in decision.notes:
        err.print(f"[dim]note: {note}[/]")


@threads_app.command("pin")
@handles_errors()
def threads_pin(
    thread_id: Annotated[str, typer.Argument(help="The thread's id.")],
    names: Annotated[list[str] | None, typer.Argument(help="Collections to search.")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Let the router choose again.")] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
) -> None:
    """Search only these collections in this thread (a pin overrides the router)."""
    if not names and not clear:
        raise UserError("name the collections to pin", hint="or pass --clear to unpin")
    with _bot("test:echo", data_dir, config, user) as bot:
        bot.pin_collections(thread_id, None if clear else names)
    err.print(
        f"thread {thread_id}: " + ("unpinned" if clear else f"pinned to {', '.join(names or [])}")
    )


# -- evaluations ----------------------------------------------------------------------------
@eval_app.command("retrieval")
@handles_errors()
def eval_retrieval(
    directory: Annotated[
        Path, typer.Argument(help="A BEIR-format directory: corpus.jsonl, queries.jsonl, qrels/.")
    ],
    split: Annotated[str, typer.Option(help="Which qrels/SPLIT.tsv to score.")] = "test",
    modes: Annotated[str, typer.Option(help="Comma-separated: keyword, vector, hybrid.")] = (
        "keyword,vector,hybrid"
    ),
    embedder: Annotated[
        str, typer.Option(help="Embedder for vector and hybrid, or 'none'.")
    ] = "local:all-minilm-l6-v2",
    fusion: Annotated[str, typer.Option(help="convex or rrf.")] = "convex",
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Do not reuse corpus vectors from a previous run.")
    ] = False,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="Index in a throw-away database on this PostgreSQL server (default: SQLite).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """nDCG@10, Recall@100 and MRR@10 of keyword, vector and hybrid search on a BEIR dataset."""
    from chatwright.evals import beir

    wanted = [m.strip() for m in modes.split(",") if m.strip()]
    status = err.status(
        "indexing the corpus (embedding it on the first run takes minutes; cached after)…"
    )
    with status if err.is_terminal else contextlib.nullcontext():
        result = beir.evaluate(
            directory,
            split,
            wanted,
            embedder=None if embedder == "none" else embedder,
            fusion=fusion,
            cache_dir=None if no_cache else beir.DEFAULT_CACHE_DIR,
            database_url=database_url,
        )
    if as_json:
        out.file.write(json.dumps(result, indent=2) + "\n")
        return
    table = Table("mode", "nDCG@10", "Recall@100", "MRR@10", "seconds", box=None, pad_edge=False)
    for mode, m in result["modes"].items():
        table.add_row(
            mode,
            f"{m['ndcg@10']:.4f}",
            f"{m['recall@100']:.4f}",
            f"{m['mrr@10']:.4f}",
            f"{m['seconds']:.1f}",
        )
    err.print(
        f"{result['dataset']} · {split} split · {result['queries']} queries · "
        f"{result['documents']:,} documents · embedder {result['embedder']}"
    )
    out.print(table)


@eval_app.command("routing")
@handles_errors()
def eval_routing(
    questions: Annotated[
        Path, typer.Argument(help='JSON Lines: {"question": ..., "expected": [names]} per line.')
    ],
    split: Annotated[
        str | None,
        typer.Option(
            help="train or test: lines with this 'split' value (a file without: a stable half)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
) -> None:
    """Routing per strategy on your collections: exact-set accuracy, per expected collection,
    small talk → none, over- and under-inclusion, fallbacks and routing time p50/p95."""
    from chatwright.evals import routing as routing_eval
    from chatwright.routing import SEMANTIC_OPTIONS

    with _bot("test:echo", data_dir, config, user) as bot:
        collections = bot.candidate_collections(bot.owner)
        if not collections or bot.index is None or bot.index.embedder is None:
            raise UserError(
                "no collections with an embedder to route to",
                hint="ingest documents first: chatwright ingest PATH --collection NAME",
            )
        embedder = bot.index.embedder
        routing = bot.settings.routing  # the semantic router as the user configured it
        semantic = routing.model_dump(include=SEMANTIC_OPTIONS)
        strategies = routing_eval.strategies_for(embedder, routing.rules or None, **semantic)
        result = routing_eval.evaluate(
            questions,
            bot.index,
            collections,
            embedder,
            strategies,
            split=split,
            vote_k=routing.vote_k,
        )
    if as_json:
        out.file.write(json.dumps(result, indent=2) + "\n")
        return
    err.print(
        f"{len(collections)} collections · routing time includes the one vector search, not"
        f" the query embedding ({result['_embed']['embed_ms']:.1f} ms, shared with retrieval)"
    )
    table = Table(*routing_eval.SUMMARY_COLUMNS, box=None)
    for row in routing_eval.summary_rows(result):
        table.add_row(*row)
    out.print(table)
    header, rows = routing_eval.collection_rows(result)
    table = Table(*header, title="exact set by expected collection", box=None)
    for row in rows:
        table.add_row(*row)
    out.print(table)


@eval_app.command("tools")
@handles_errors()
def eval_tools(
    tasks: Annotated[
        Path | None, typer.Argument(help="JSON Lines of tool tasks (default: evals/tools).")
    ] = None,
    model: ModelOpt = None,
    split: Annotated[str, typer.Option(help="train, test or all.")] = "all",
    errors: Annotated[bool, typer.Option("--errors", help="Print the tasks it got wrong.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """How often a model picks the right tool with valid arguments (30 tasks, 6 tools)."""
    from chatwright.evals import tools as tools_eval

    argv = [str(tasks or tools_eval.DEFAULT_PATH), "--model", model or "local:gemma-3-270m"]
    argv += ["--split", split] + (["--errors"] if errors else []) + (["--json"] if as_json else [])
    tools_eval.main(argv, out=lambda line: out.print(line, markup=False, highlight=False))


@eval_app.command("answers")
@handles_errors()
def eval_answers(
    tasks: Annotated[Path, typer.Argument(help="MTRAG-format task file (JSON Lines).")],
    mode: Annotated[AnswerMode, typer.Option(help="extract, generate or auto.")] = AnswerMode.auto,
    model: ModelOpt = None,
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="Passages per answer.")] = 2,
    limit: Annotated[
        int | None, typer.Option(min=1, max=_MAX_ROWS, help="A random sample of N tasks.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Answer quality from documents per answerability class: ROUGE-L, gold content words
    recalled, citations, declines, prompt leaks, time per answer."""
    from chatwright.evals import answers as answers_eval

    argv = [str(tasks), "--mode", mode.value, "--model", model or "local:gemma-3-270m"]
    argv += ["-k", str(k)] + (["--limit", str(limit)] if limit else [])
    argv += ["--json"] if as_json else []
    answers_eval.main(argv, out=lambda line: out.print(line, markup=False, highlight=False))


@eval_app.command("memory")
@handles_errors()
def eval_memory(
    files: Annotated[list[Path], typer.Argument(help="LoCoMo-format conversation files (JSON).")],
    embedder: Annotated[
        str | None, typer.Option(help="Embedder for recall (default: configured), or 'none'.")
    ] = None,
    k: Annotated[
        list[int] | None, typer.Option("-k", min=1, max=100, help="Recall@k to report (5).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Recall of long conversations: the share of evidence turns recall brings back (at k=5
    and recall_k) per LoCoMo category, and its cost per question."""
    from chatwright.evals import memory as memory_eval

    argv = [str(f) for f in files] + (["--embedder", embedder] if embedder else [])
    argv += [a for n in k or [] for a in ("-k", str(n))] + (["--json"] if as_json else [])
    argv += ["--config", str(config)] if config else []
    memory_eval.main(argv, out=lambda line: out.print(line, markup=False, highlight=False))


tools_app = typer.Typer(help="The tools the model may call: built-in, your own, MCP servers'.")
app.add_typer(tools_app, name="tools")


@tools_app.command("list")
@handles_errors()
def tools_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    model: ModelOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
) -> None:
    """List the tools a turn offers the model, and the state of each MCP server."""
    with _bot(model, data_dir, config, user) as bot:
        found = bot.describe_tools()
        servers = [{"name": s.name, "status": s.status()} for s in bot.mcp_servers]
        if as_json:
            payload = {"tools": found, "mcp_servers": servers}
            out.file.write(json.dumps(payload, ensure_ascii=False) + "\n")
            return
        if not found:
            err.print(
                "no tools (built-ins: [tools] builtin; MCP servers: [mcp.NAME] sections)",
                markup=False,
            )
        for t in found:
            effects = ""
            if t["side_effects"]:
                effects = f" · side effects ({'auto' if t['auto_approved'] else 'asks first'})"
            out.print(f"[bold]{t['name']}[/] [dim]{t['source']}{effects}[/]", highlight=False)
            if t["description"]:
                out.print(f"  {t['description'].splitlines()[0]}", markup=False)
        for server in servers:
            err.print(f"MCP server {server['name']}: {server['status']}", markup=False)


@app.command("models")
@handles_errors()
def models_list(
    timeout: Annotated[
        float, typer.Option(min=0.1, max=60, help="Seconds to wait for each server.")
    ] = 2.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
    config: ConfigOpt = None,
) -> None:
    """What can be named with --model: the embedded model, the test models, the providers
    (is a key set?), and what a local Ollama or a configured OpenAI-compatible server has."""
    from chatwright.models.catalog import catalog

    found = catalog(load_settings(config), timeout_s=timeout)
    if as_json:
        out.file.write(json.dumps(found.to_dict(), indent=2) + "\n")
        return
    table = Table("model", "kind", "ready", "note", box=None)
    for m in found.models:
        default = " (default)" if m.name == found.default else ""
        cells = (m.name + default, m.kind, "yes" if m.available else "no", m.note)
        table.add_row(*map(Text, cells))  # Text: `pip install "chatwright[local]"` as is
    out.print(table)
    for p in found.providers:
        where = f" at {p.url}" if p.url and p.url not in (p.error or "") else ""
        if p.error is None:
            state = f"{p.models} models" if p.reachable else "key set"
            out.print(f"{p.provider}{where}: {state}", markup=False)
        else:
            hint = f" (hint: {p.hint})" if p.hint else ""
            out.print(f"{p.provider}{where}: {p.error}{hint}", markup=False)


@app.command()
def version() -> None:
    """Print chatwright's version."""
    out.print(f"chatwright {__version__}")


def main() -> None:
    app(prog_name="chatwright")


if __name__ == "__main__":  # pragma: no cover
    main()
