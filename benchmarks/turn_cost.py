"""Engine cost per turn: chatwright's own overhead, with the ``test:echo`` model.

What it measures
----------------
* **Time per turn** of ``await bot.achat(thread_id, text)`` inside ONE event loop (so the sync
  wrapper's per-call ``asyncio.run`` is not counted), on a SQLite store on disk in a temporary
  directory with the real default settings (WAL journal, ``synchronous=FULL``, traces stored,
  20 history messages). Wall time (what a caller waits) and the process's CPU time (the
  engine's own work, which waiting on the disk does not inflate) are both recorded.
  - Small checkpoints (below ``--fresh-below``; by default turns 1 and 10) are measured over
    many FRESH threads: the 1st / 10th turn of each of ``--fresh-threads`` new threads.
  - Every checkpoint is also measured on ONE long thread driven turn by turn with real turns:
    a window of ``--window`` consecutive turns starting at that turn number (turn 10,000 is
    turns 10,000..10,049 of that thread).
* **Bytes stored per turn**: the growth of the database files (main db + ``-wal`` after
  ``PRAGMA wal_checkpoint(TRUNCATE)``) over the long thread, divided by its number of turns,
  compared with the raw text of a turn (UTF-8 bytes of the user message plus the answer).

A turn commits twice with ``synchronous=FULL``, so on a disk shared with other busy processes
a turn's wall time is mostly the wait for the disk's flush. Before each timed window the
benchmark probes the disk (4 KiB write + fdatasync) and waits, up to ``--quiet-wait`` seconds,
for it to be quiet; windows that ran on a busy disk anyway are flagged, and the headline
figures are the median over ``--rounds`` independent rounds, preferring unflagged windows.

Targets (printed PASS/FAIL; the exit code is 0 either way, this is a measurement):
  * median per-turn cost at the last checkpoint <= 2 ms
  * median at the last checkpoint <= 1.5x the median at turn 10 (fresh threads)
  * bytes stored per turn <= 2x the raw text of a turn

On PostgreSQL (``--backend postgres``: a throwaway ``pgserver`` started by the script, or
``--database-url URL``: a server where the URL's user may create databases), the same turns
run on a ``PostgresStore``, each bot in a fresh database. The server does part of each turn's
work in its own processes, so their CPU time is measured too (``ServerCpu``: /proc ticks of
10 ms, so it is given as a mean over many turns); bytes per turn are the database's growth
(``pg_database_size``, WAL not counted). The default (SQLite) run is unchanged.

Run: ``.venv/bin/python benchmarks/turn_cost.py`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as _dt
import io
import itertools
import json
import os
import platform
import pstats
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if (ROOT / "src" / "chatwright").is_dir() and str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

import _postgres  # noqa: E402  (benchmarks/_postgres.py)
from chatwright.bot import Chatbot  # noqa: E402
from chatwright.config import MemorySettings, Settings  # noqa: E402

DEFAULT_CHECKPOINTS = (1, 10, 100, 1_000, 10_000)
DEFAULT_OUT = HERE / "results" / "turn_cost.json"
DEFAULT_OUT_POSTGRES = HERE / "results" / "turn_cost_postgres.json"

TARGET_MS = 2.0
TARGET_RATIO_VS_TURN_10 = 1.5
TARGET_BYTES_RATIO = 2.0
# --memory default (issue 14): the query embedding is in every turn, so the reference is turn 100
DEFAULT_MEMORY_TARGETS = {"ms": 15.0, "ratio": 1.5, "vs_turn": 100, "bytes": 2.5, "restart": 200.0}

# -- realistic user messages ------------------------------------------------------------------
_WORD_LIST = (
    "the a an my our your this that some every each any one two few many more less "
    "I you we they it he she people team customer manager friend teacher doctor "
    "want need think know remember forget explain plan check compare write send read "
    "find change move book cancel order pay fix update build share review help "
    "trip flight hotel train ticket meeting report budget invoice email letter recipe "
    "garden kitchen window car bike phone laptop printer account password order delivery "
    "today tomorrow yesterday morning evening week month year weekend holiday deadline "
    "quickly carefully really probably usually again still already soon later maybe "
    "good better best cheap expensive small large new old early late simple clear "
    "about with for from into over after before during without between because "
    "and but or so if when while although since until"
)
_WORDS = _WORD_LIST.split()
_OPENERS = (
    "Could you help me",
    "I was wondering",
    "Please explain",
    "Can you tell me",
    "I need to know",
    "Quick question",
    "Thanks for that",
    "One more thing",
    "Let me ask",
    "I am trying to figure out",
)


def make_messages(count: int, seed: int, lo: int = 150, hi: int = 300) -> list[str]:
    """``count`` deterministic English-like messages of ``lo``..``hi`` characters."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        target = rng.randint(lo, hi)
        sentences: list[str] = []
        length = 0
        while length < target:
            words = [rng.choice(_WORDS) for _ in range(rng.randint(5, 14))]
            if rng.random() < 0.35:
                words.insert(rng.randint(2, len(words) - 1), ",")
            body = " ".join(words).replace(" ,", ",")
            lead = rng.choice(_OPENERS) + " " if not sentences and rng.random() < 0.5 else ""
            sentence = lead + body
            sentence = sentence[0].upper() + sentence[1:] + rng.choice("..?!")
            sentences.append(sentence)
            length = len(" ".join(sentences))
        text = " ".join(sentences)
        if len(text) > hi:  # cut at a word boundary, keep it a sentence
            text = text[: hi - 1].rsplit(" ", 1)[0].rstrip(",") + "."
        out.append(text)
    return out


# -- statistics ------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100)."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100.0
    f = int(k)
    c = min(f + 1, len(s) - 1)
    return s[f] + (s[c] - s[f]) * (k - f)


def summarize(ms: list[float]) -> dict[str, Any]:
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 4),
        "p90_ms": round(percentile(ms, 90), 4),
        "min_ms": round(min(ms), 4),
        "max_ms": round(max(ms), 4),
        "mean_ms": round(statistics.fmean(ms), 4),
    }


def stage_medians(traces: list[Any]) -> dict[str, float]:
    """Median ms of each stage the engine itself timed (from the turns' traces)."""
    by_stage: dict[str, list[float]] = {}
    for trace in traces:
        for st in trace.stages:
            if not st.skipped:
                by_stage.setdefault(st.name, []).append(st.ms)
        by_stage.setdefault("trace.total", []).append(trace.total_ms)
    return {k: round(statistics.median(v), 4) for k, v in by_stage.items()}


# -- storage ---------------------------------------------------------------------------------
def db_bytes(db_path: Path) -> dict[str, Any]:
    """Size of the db files after a TRUNCATE checkpoint, from a separate connection."""
    con = sqlite3.connect(db_path, timeout=10.0)
    try:
        busy, _, _ = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
        freelist = con.execute("PRAGMA freelist_count").fetchone()[0]
        try:
            per_table = {
                name: size
                for name, size in con.execute(
                    "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY name"
                )
            }
        except sqlite3.Error:  # SQLite built without dbstat
            per_table = {}
    finally:
        con.close()
    main = db_path.stat().st_size
    wal = Path(f"{db_path}-wal")
    wal_size = wal.stat().st_size if wal.exists() else 0
    return {
        "db": main,
        "wal": wal_size,
        "total": main + wal_size,
        "checkpoint_busy": busy,
        "page_size": page_size,
        "freelist_pages": freelist,
        "per_table": per_table,
    }


def payload_bytes(db_path: Path) -> dict[str, float]:
    """Average stored payload per turn by column (what the rows carry, before page overhead)."""
    con = sqlite3.connect(db_path, timeout=10.0)
    try:
        turns = con.execute("SELECT COUNT(*) FROM traces").fetchone()[0] or 1
        text, data = con.execute(
            "SELECT COALESCE(SUM(LENGTH(CAST(text AS BLOB))), 0),"
            " COALESCE(SUM(LENGTH(data)), 0) FROM messages"
        ).fetchone()
        trace = con.execute("SELECT COALESCE(SUM(LENGTH(data)), 0) FROM traces").fetchone()[0]
    finally:
        con.close()
    return {
        "messages.text": round(text / turns, 1),
        "messages.data": round(data / turns, 1),
        "traces.data": round(trace / turns, 1),
    }


def pg_payload_bytes(url: str) -> dict[str, float]:
    """As :func:`payload_bytes`, for a PostgreSQL database."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        turns = conn.execute("SELECT COUNT(*) FROM traces").fetchone()[0] or 1
        text, data = conn.execute(
            "SELECT COALESCE(SUM(octet_length(text)), 0), COALESCE(SUM(octet_length(data)), 0)"
            " FROM messages"
        ).fetchone()
        trace = conn.execute("SELECT COALESCE(SUM(octet_length(data)), 0) FROM traces").fetchone()[
            0
        ]
    return {
        "messages.text": round(text / turns, 1),
        "messages.data": round(data / turns, 1),
        "traces.data": round(trace / turns, 1),
    }


def pressure() -> dict[str, float] | None:
    """Linux PSI: microseconds some task waited for a CPU / for I/O, and the clock, now."""
    out: dict[str, float] = {"at": time.perf_counter()}
    for kind in ("cpu", "io"):
        try:
            line = Path(f"/proc/pressure/{kind}").read_text().splitlines()[0]
        except (OSError, IndexError):
            return None
        out[kind] = float(line.rsplit("total=", 1)[1])
    return out


def pressure_share(start: dict[str, float] | None, end: dict[str, float] | None) -> Any:
    """Share of a window's time during which some task on the machine waited for a CPU or for
    I/O (I/O includes this benchmark's own commits). High CPU pressure means other processes
    competed for the 2 cores during the window."""
    if not start or not end:
        return None
    span = (end["at"] - start["at"]) * 1e6
    return {k: round((end[k] - start[k]) / span, 3) for k in ("cpu", "io")}


# -- the disk --------------------------------------------------------------------------------
class Disk:
    """Probes the disk's flush latency (4 KiB overwrite + fdatasync) next to the database.

    A turn's two synchronous commits wait for such flushes; when other processes keep the
    disk busy, that wait (not the engine) dominates a turn. :meth:`wait_quiet` holds a timed
    window back until the disk is quiet, up to a limit; :meth:`probe` between timed turns
    (outside their timing) says whether each ran on a quiet disk.
    """

    def __init__(self, directory: Path, threshold_ms: float, max_wait_s: float) -> None:
        self.threshold_ms = threshold_ms
        self.max_wait_s = max_wait_s
        self.probes: list[float] = []  # medians of the 20-flush probes of wait_quiet
        directory.mkdir(parents=True, exist_ok=True)
        self._path = directory / "fsync-probe"
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.pwrite(self._fd, b"\0" * 65536, 0)  # allocated once: later flushes are data only
        os.fsync(self._fd)
        self._sync = getattr(os, "fdatasync", os.fsync)
        self._n = 0

    def probe(self, count: int = 1) -> float:
        """Median ms of ``count`` flushes of a 4 KiB overwrite."""
        times = []
        for _ in range(count):
            self._n += 1
            start = time.perf_counter()
            os.pwrite(self._fd, b"x" * 4096, (self._n % 16) * 4096)
            self._sync(self._fd)
            times.append((time.perf_counter() - start) * 1000)
        return round(statistics.median(times), 4)

    def busy(self, ms: float) -> bool:
        return ms > self.threshold_ms

    async def wait_quiet(self) -> dict[str, Any]:
        start = time.perf_counter()
        while True:
            ms = self.probe(20)
            self.probes.append(ms)
            waited = time.perf_counter() - start
            if not self.busy(ms) or waited >= self.max_wait_s:
                return {"fsync_ms": ms, "waited_s": round(waited, 2), "quiet": not self.busy(ms)}
            await asyncio.sleep(0.5)

    def close(self) -> None:
        os.close(self._fd)
        self._path.unlink(missing_ok=True)


# -- the benchmark -----------------------------------------------------------------------------
# "log": the conversation engine alone (store, pipeline, context of recent turns) with no
# summaries and no recall index; "default": the default memory as well (running summaries with
# test:echo as the summarizer, hybrid recall with the local MiniLM embedder, in the background).
MEMORY_MODES = ("log", "default")
memory_mode = "log"
# None: SQLite at data_dir/chatwright.db; else the PostgreSQL server on which every bot gets a
# fresh database (dropped at the end unless --keep)
pg_server: str | None = None
pg_databases: list[str] = []


def make_settings(directory: Path, database_url: str | None = None) -> Settings:
    if memory_mode == "log":
        memory = MemorySettings(strategy="tokens", recall=False)
        return Settings(
            model="test:echo", data_dir=directory, memory=memory, database_url=database_url
        )
    return Settings(model="test:echo", data_dir=directory, database_url=database_url)


def make_bot(directory: Path) -> Chatbot:
    url = None
    if pg_server is not None:
        url = _postgres.fresh_database(pg_server)
        pg_databases.append(url)
    return Chatbot(settings=make_settings(directory, url))


class ServerCpuMeter:
    """The PostgreSQL server's CPU seconds (None for SQLite: the engine's process does it all)."""

    def __init__(self, bot: Chatbot) -> None:
        url = getattr(bot.store, "url", None)
        self.cpu = _postgres.ServerCpu(url) if url else None

    def now(self) -> float | None:
        return self.cpu.seconds() if self.cpu is not None else None


def per_turn_ms(start: float | None, end: float | None, turns: int) -> float | None:
    if start is None or end is None or turns <= 0:
        return None
    return round((end - start) * 1000 / turns, 4)


async def timed_turn(bot: Chatbot, thread_id: str, text: str) -> tuple[float, float, Any]:
    cpu, wall = time.process_time(), time.perf_counter()
    answer = await bot.achat(thread_id, text)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall * 1000, cpu * 1000, answer


def window_figures(wall: list[float], cpu: list[float], traces: list[Any]) -> dict[str, Any]:
    return {
        **summarize(wall),
        "cpu_median_ms": round(statistics.median(cpu), 4),
        "stages_median_ms": stage_medians(traces),
    }


async def fresh_threads(
    directory: Path,
    checkpoints: list[int],
    threads: int,
    messages: list[str],
    disk: Disk,
    batch: int = 50,
    min_clean: int = 30,
) -> dict[Any, Any]:
    """The Nth turn of ``threads`` fresh threads, for each N in ``checkpoints``.

    Threads run in batches, each started on a quiet disk when possible, and the disk is probed
    just before each recorded turn; the figures come from the turns that found it quiet (all of
    them, flagged, when fewer than ``min_clean`` did).
    """
    bot = make_bot(directory)
    server = ServerCpuMeter(bot)
    server_s: dict[int, float] = {c: 0.0 for c in checkpoints}  # summed over recorded turns
    last = max(checkpoints)
    samples: dict[int, list[tuple[float, float, Any, float]]] = {c: [] for c in checkpoints}
    waits = []
    try:
        for i in range(20):  # warm-up on a throwaway thread (first-call costs, caches)
            await bot.achat("warmup", messages[i % len(messages)])
        k = 0
        for first in range(0, threads, batch):
            waits.append(await disk.wait_quiet())
            for t in range(first, min(first + batch, threads)):
                for turn in range(1, last + 1):
                    text = messages[k % len(messages)]
                    k += 1
                    fsync = disk.probe() if turn in samples else 0.0
                    before = server.now() if turn in samples else None
                    wall, cpu, answer = await timed_turn(bot, f"fresh-{t:05d}", text)
                    if turn in samples:
                        after = server.now()
                        if before is not None and after is not None:
                            server_s[turn] += after - before
                        samples[turn].append((wall, cpu, answer.trace, fsync))
    finally:
        bot.close()
    out: dict[Any, Any] = {}
    for c in checkpoints:
        clean = [s for s in samples[c] if not disk.busy(s[3])]
        use = clean if len(clean) >= min_clean else samples[c]
        out[c] = {
            **window_figures([s[0] for s in use], [s[1] for s in use], [s[2] for s in use]),
            "fsync_median_ms": round(statistics.median(s[3] for s in samples[c]), 4),
            "busy_samples": len(samples[c]) - len(clean),
            "disk_busy": use is not clean,
        }
        if server.cpu is not None:  # over every recorded turn (busy disk or not)
            out[c]["server_cpu_mean_ms"] = round(server_s[c] * 1000 / len(samples[c]), 4)
    out["waits"] = waits
    return out


async def long_thread(
    directory: Path,
    checkpoints: list[int],
    window: int,
    messages: list[str],
    disk: Disk,
    profile_turns: int = 0,
) -> dict[str, Any]:
    """Drive ONE thread to max(checkpoints) + window - 1 turns; time every turn.

    Before each checkpoint's window the disk is given a chance to be quiet. With
    ``profile_turns``, that many more turns run under cProfile afterwards (never inside a timed
    window: the profiler slows what it watches).
    """
    bot = make_bot(directory)
    pg_url = getattr(bot.store, "url", None)
    db_path = None if pg_url else Path(bot.store.path)  # type: ignore[attr-defined]

    def size_now() -> dict[str, Any]:
        return db_bytes(db_path) if db_path else _postgres.database_size(pg_url, checkpoint=True)

    server = ServerCpuMeter(bot)
    server_at: dict[int, float | None] = {}  # the server's CPU s before/after each window
    total_turns = max(checkpoints) + window - 1
    starts = set(checkpoints)
    ends = {c + window - 1 for c in checkpoints}
    sizes = {0: size_now()}
    wall_ms: list[float] = [0.0] * (total_turns + 1)  # 1-based
    cpu_ms: list[float] = [0.0] * (total_turns + 1)
    traces: dict[int, Any] = {}
    in_window = {t for c in checkpoints for t in range(c, c + window)}
    waits: dict[int, dict[str, Any]] = {}
    psi_start: dict[int, dict[str, float] | None] = {}
    psi: dict[int, dict[str, float] | None] = {}
    fsync_ms: dict[int, float] = {}
    raw_text = 0
    profile_text = None
    drive_start = time.perf_counter()
    server_start = server.now()
    try:
        for turn in range(1, total_turns + 1):
            if turn in starts:
                # Old turns are embedded in the pauses between turns (SearchIndex.
                # embed_background), and these turns come back to back: each window starts
                # on a thread indexed to date, as after a real conversation's pauses.
                bot.wait_background()
                waits[turn] = await disk.wait_quiet()
                psi_start[turn] = pressure()
                server_at[-turn] = server.now()
            if turn in in_window:
                fsync_ms[turn] = disk.probe()  # the disk's state, outside the turn's timing
            text = messages[(turn - 1) % len(messages)]
            wall_ms[turn], cpu_ms[turn], answer = await timed_turn(bot, "long", text)
            if turn in in_window:
                traces[turn] = answer.trace
            raw_text += len(text.encode("utf-8")) + len(answer.text.encode("utf-8"))
            if turn in ends:
                server_at[turn] = server.now()
                for c in checkpoints:  # windows may overlap (1..50 and 10..59)
                    if c + window - 1 == turn:
                        psi[c] = pressure_share(psi_start.pop(c), pressure())
                bot.wait_background()  # background memory work counts in the bytes
                sizes[turn] = size_now()  # snapshots after a window, never inside one
        drive_s = time.perf_counter() - drive_start
        server_end = server.now()
        payload = payload_bytes(db_path) if db_path else pg_payload_bytes(pg_url)
        if profile_turns:
            await disk.wait_quiet()
            profiler = cProfile.Profile()
            for turn in range(total_turns + 1, total_turns + profile_turns + 1):
                text = messages[(turn - 1) % len(messages)]
                profiler.enable()
                await bot.achat("long", text)
                profiler.disable()
            out = io.StringIO()
            out.write(
                f"cProfile of turns {total_turns + 1:,}..{total_turns + profile_turns:,}"
                " of the long thread (run after the timed windows)\n"
            )
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("tottime").print_stats(25)
            stats.sort_stats("cumulative").print_stats(40)
            profile_text = out.getvalue()
    finally:
        bot.close()
    restart = restart_turns(
        directory, pg_url, [messages[(total_turns + i) % len(messages)] for i in range(3)]
    )
    windows = {}
    for c in checkpoints:
        turns = range(c, c + window)
        windows[c] = {
            "turns": [c, c + window - 1],
            **window_figures(
                [wall_ms[t] for t in turns], [cpu_ms[t] for t in turns], [traces[t] for t in turns]
            ),
            "disk": {
                **waits[c],
                "fsync_median_ms": round(statistics.median(fsync_ms[t] for t in turns), 4),
                "fsync_p90_ms": round(percentile([fsync_ms[t] for t in turns], 90), 4),
                "busy_turns": sum(disk.busy(fsync_ms[t]) for t in turns),
            },
            "machine_pressure": psi[c],
            "disk_busy": disk.busy(statistics.median(fsync_ms[t] for t in turns)),
        }
        server_ms = per_turn_ms(server_at.get(-c), server_at.get(c + window - 1), window)
        if server_ms is not None:  # overlapping windows: the later start's reading wins
            windows[c]["server_cpu_mean_ms"] = server_ms
    growth = sizes[total_turns]["total"] - sizes[0]["total"]
    marks = sorted(sizes)
    segments = [
        {
            "after_turn": a,
            "to_turn": b,
            "bytes": sizes[b]["total"] - sizes[a]["total"],
            "bytes_per_turn": round((sizes[b]["total"] - sizes[a]["total"]) / (b - a), 1),
        }
        for a, b in itertools.pairwise(marks)
    ]
    result = {
        "turns": total_turns,
        "drive_seconds": round(drive_s, 3),
        "restart": restart,
        "all_turns_ms": {
            **summarize(wall_ms[1:]),
            "cpu_median_ms": round(statistics.median(cpu_ms[1:]), 4),
            "cpu_mean_ms": round(statistics.fmean(cpu_ms[1:]), 4),
            "server_cpu_mean_ms": per_turn_ms(server_start, server_end, total_turns),
        },
        "windows": windows,
        "storage": {
            "bytes_start": sizes[0]["total"],
            "bytes_end": sizes[total_turns]["total"],
            "growth": growth,
            "bytes_per_turn": round(growth / total_turns, 1),
            "raw_text_bytes_per_turn": round(raw_text / total_turns, 1),
            "ratio": round(growth / raw_text, 3),
            "payload_per_turn": payload,
            "per_table_bytes_end": sizes[total_turns]["per_table"],
            "freelist_pages_end": sizes[total_turns].get("freelist_pages"),
            "page_size": sizes[total_turns].get("page_size"),
            "segments": segments,
        },
    }
    if profile_text:
        result["profile_text"] = profile_text
    return result


# Run in a fresh process by restart_turns: a bot opened on the long thread's data, then its
# first turns timed (what a restarted server's first request on a long thread costs).
_RESTART_PROBE = """
import asyncio, json, sys, time
from pathlib import Path
args = json.loads(sys.argv[1])
sys.path.insert(0, args["here"])
import turn_cost
turn_cost.memory_mode = args["memory"]
start = time.perf_counter()
bot = turn_cost.Chatbot(settings=turn_cost.make_settings(Path(args["dir"]), args["url"]))
opened = time.perf_counter() - start
start = time.perf_counter()
embedder = bot.index.embedder if args["warm"] and bot.index is not None else None
if embedder is not None:  # what a server could do before taking requests
    embedder.embed(["warm-up"])
warmed = time.perf_counter() - start
async def turns():
    out = []
    for text in args["texts"]:
        start = time.perf_counter()
        await bot.achat("long", text)
        out.append(round((time.perf_counter() - start) * 1000, 3))
    return out
ms = asyncio.run(turns())
bot.close()
print(json.dumps({"open_ms": round(opened * 1000, 3), "warm_ms": round(warmed * 1000, 3),
                  "turns_ms": ms}))
"""


def restart_turns(directory: Path, database_url: str | None, texts: list[str]) -> dict[str, Any]:
    """The long thread's next turns in a new process (see ``_RESTART_PROBE``): the bot's
    opening, then each turn's wall ms; the first pays for whatever a restart reloads (the
    embedding model, the thread's recall index). Twice: cold, and with the embedding model
    loaded once the bot is open (``warm_ms``), as a server could before taking requests."""
    import subprocess

    out: dict[str, Any] = {}
    for warm in (False, True):
        probe = {
            "here": str(HERE),
            "memory": memory_mode,
            "dir": str(directory),
            "url": database_url,
            "texts": texts[1:] if warm else texts[:1],  # never a turn already in the thread
            "warm": warm,
        }
        done = subprocess.run(
            [sys.executable, "-c", _RESTART_PROBE, json.dumps(probe)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            return {"error": done.stderr.strip()[-500:]}
        out["warm" if warm else "cold"] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Up to ``args.rounds`` independent rounds (fresh databases each), in ONE event loop."""
    checkpoints = sorted(set(args.checkpoints))
    fresh = [c for c in checkpoints if c < args.fresh_below]
    messages = make_messages(args.messages, args.seed)
    rounds = []
    started = time.perf_counter()
    for r in range(args.rounds):
        base = root / f"round-{r + 1}"
        disk = Disk(base, args.quiet_fsync_ms, args.quiet_wait)
        round_start = time.perf_counter()
        one: dict[str, Any] = {}
        if fresh:
            one["fresh_threads"] = await fresh_threads(
                base / "fresh", fresh, args.fresh_threads, messages, disk
            )
        last_round = r == args.rounds - 1
        one["long_thread"] = await long_thread(
            base / "long",
            checkpoints,
            args.window,
            messages,
            disk,
            profile_turns=args.profile_turns if args.profile and last_round else 0,
        )
        disk.close()
        one["fsync_probes_ms"] = disk.probes
        one["seconds"] = round(time.perf_counter() - round_start, 2)
        rounds.append(one)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        elapsed = time.perf_counter() - started
        if r < args.rounds - 1 and elapsed + one["seconds"] > args.budget:
            print(
                f"stopping after {r + 1} round(s): another would pass --budget "
                f"{args.budget:g} s (this one took {one['seconds']:.0f} s)"
            )
            break
    return {
        "rounds": rounds,
        "message_chars": {
            "min": min(map(len, messages)),
            "median": statistics.median(map(len, messages)),
            "max": max(map(len, messages)),
        },
    }


def combine(per_round: list[dict[str, Any]]) -> dict[str, Any]:
    """Headline figures over rounds: the median of the rounds' medians and of their p90s.

    Rounds whose window ran on a busy disk are left out when at least one round's did not
    (a busy disk slows a window several-fold; that is the disk, not the engine).
    """
    clean = [s for s in per_round if not s.get("disk_busy")]
    use = clean or per_round

    def med(key: str) -> float:
        return round(statistics.median(s[key] for s in use), 4)

    stages: dict[str, list[float]] = {}
    for s in use:
        for k, v in s["stages_median_ms"].items():
            stages.setdefault(k, []).append(v)
    out = {
        "n_per_round": per_round[0]["n"],
        "rounds": len(per_round),
        "rounds_used": len(use),
        "disk_busy": not clean,
        "median_ms": med("median_ms"),
        "p90_ms": med("p90_ms"),
        "cpu_median_ms": med("cpu_median_ms"),
        "round_medians_ms": [s["median_ms"] for s in per_round],
        "round_disk_busy": [bool(s.get("disk_busy")) for s in per_round],
        "stages_median_ms": {k: round(statistics.median(v), 4) for k, v in stages.items()},
    }
    server = [s["server_cpu_mean_ms"] for s in use if s.get("server_cpu_mean_ms") is not None]
    if server:
        out["server_cpu_mean_ms"] = round(statistics.median(server), 4)
    if "turns" in per_round[0]:
        out["turns"] = per_round[0]["turns"]
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="chatwright engine cost per turn (test:echo, one SQLite thread on disk).",
    )
    p.add_argument(
        "--checkpoints",
        type=lambda s: [int(x) for x in s.replace("_", "").split(",")],
        default=list(DEFAULT_CHECKPOINTS),
        help="comma-separated turn numbers (default: 1,10,100,1000,10000)",
    )
    p.add_argument(
        "--window",
        type=int,
        default=50,
        help="consecutive turns timed on the long thread at each checkpoint (50)",
    )
    p.add_argument(
        "--fresh-threads",
        type=int,
        default=300,
        help="fresh threads for the small checkpoints, per round (300)",
    )
    p.add_argument(
        "--fresh-below",
        type=int,
        default=100,
        help="checkpoints below this are also measured over fresh threads (100)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="independent rounds, fresh databases each; headline figures are the "
        "median over rounds (3)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=150.0,
        help="start no further round once this many seconds would be passed (150)",
    )
    p.add_argument(
        "--quiet-fsync-ms",
        type=float,
        default=1.0,
        help="the disk counts as quiet when a 4 KiB write + fdatasync takes at most "
        "this long, median of 20 (1.0)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="the longest wait for a quiet disk before a timed window (10 s)",
    )
    p.add_argument(
        "--messages",
        type=int,
        default=1000,
        help="distinct generated user messages, used in rotation (1000)",
    )
    p.add_argument("--seed", type=int, default=20261123, help="seed of the message generator")
    p.add_argument(
        "--backend",
        choices=("sqlite", "postgres"),
        default=None,
        help="sqlite (default): the default store on disk; postgres: a PostgresStore, each "
        "bot in a fresh database on --database-url's server, or on a throwaway pgserver",
    )
    p.add_argument(
        "--database-url",
        default=None,
        help="postgresql://... of a server where that user may create databases (implies "
        "--backend postgres; default: start a pgserver in --tmp-dir)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"JSON results path (default: {DEFAULT_OUT.relative_to(ROOT)}, or "
        f"{DEFAULT_OUT_POSTGRES.relative_to(ROOT)} on PostgreSQL)",
    )
    p.add_argument(
        "--tmp-dir",
        type=Path,
        default=None,
        help="where to create the temporary data directory (default: system temp; "
        "it must be on the disk you want to measure)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary databases")
    p.add_argument(
        "--memory",
        choices=MEMORY_MODES,
        default="log",
        help="log: the conversation engine alone, no summaries or recall index (default); "
        "default: the default memory settings too (summaries, hybrid recall, in the background)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="after the last round's timed windows, run --profile-turns more turns "
        "under cProfile and print the hot spots",
    )
    p.add_argument(
        "--profile-turns",
        type=int,
        default=1000,
        help="turns run under cProfile with --profile (1000)",
    )
    args = p.parse_args(argv)
    if not args.checkpoints or min(args.checkpoints) < 1:
        p.error("--checkpoints must be positive turn numbers")
    if min(args.window, args.fresh_threads, args.messages, args.rounds, args.profile_turns) < 1:
        p.error("--window, --fresh-threads, --rounds, --messages and --profile-turns must be >= 1")
    if args.database_url and args.backend == "sqlite":
        p.error("--database-url is for --backend postgres")
    args.backend = "postgres" if args.database_url else (args.backend or "sqlite")
    if args.out is None:
        args.out = DEFAULT_OUT_POSTGRES if args.backend == "postgres" else DEFAULT_OUT
    return args


def machine() -> dict[str, Any]:
    out: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpus_usable": (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        "loadavg": os.getloadavg(),
    }
    if pg_server is not None:
        import psycopg

        with psycopg.connect(pg_server, autocommit=True) as conn:
            out["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
            out["postgresql_settings"] = dict(
                conn.execute(
                    "SELECT name, setting FROM pg_settings WHERE name IN ('synchronous_commit',"
                    " 'fsync', 'wal_sync_method', 'shared_buffers', 'full_page_writes')"
                ).fetchall()
            )
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    global memory_mode, pg_server
    memory_mode = args.memory
    env = sorted(k for k in os.environ if k.startswith("CHATWRIGHT_"))
    if env:
        print(f"warning: CHATWRIGHT_* variables set, they change the settings: {', '.join(env)}")
    root = Path(tempfile.mkdtemp(prefix="chatwright-bench-", dir=args.tmp_dir))
    if args.backend == "postgres":
        pg_server = _postgres.server_url(args.database_url, args.tmp_dir)
    load_before = os.getloadavg()
    wall = time.perf_counter()
    try:
        figures = asyncio.run(run(args, root))  # ONE event loop for every turn
    finally:
        if args.keep:
            print(f"databases kept in {root} {' '.join(pg_databases)}")
        else:
            shutil.rmtree(root, ignore_errors=True)
            for url in pg_databases:
                _postgres.drop_database(url)
    wall = time.perf_counter() - wall
    settings = make_settings(root)
    store_name = "SQLite on disk (temp dir), WAL, synchronous=FULL"
    if pg_server is not None:
        store_name = "PostgreSQL (a fresh database per bot), pgvector; " + (
            "given server" if args.database_url else "pgserver in a temp dir"
        )

    checkpoints = sorted(set(args.checkpoints))
    rounds = figures["rounds"]
    profile_text = rounds[-1]["long_thread"].pop("profile_text", None)
    fresh = {}
    if "fresh_threads" in rounds[0]:
        fresh = {
            c: combine([r["fresh_threads"][c] for r in rounds])
            for c in checkpoints
            if c in rounds[0]["fresh_threads"]
        }
    windows = {c: combine([r["long_thread"]["windows"][c] for r in rounds]) for c in checkpoints}
    storage = rounds[0]["long_thread"]["storage"]  # the same bytes every round (same turns)
    turns = rounds[0]["long_thread"]["turns"]
    drive_s = [r["long_thread"]["drive_seconds"] for r in rounds]
    all_turns = [r["long_thread"]["all_turns_ms"] for r in rounds]
    probes = [p for r in rounds for p in r["fsync_probes_ms"]]

    last = max(checkpoints)
    last_median = windows[last]["median_ms"]
    target_ms, ratio, bytes_ratio = TARGET_MS, TARGET_RATIO_VS_TURN_10, TARGET_BYTES_RATIO
    vs_turn = 10
    if memory_mode == "default":
        t = DEFAULT_MEMORY_TARGETS
        target_ms, ratio, vs_turn, bytes_ratio = t["ms"], t["ratio"], t["vs_turn"], t["bytes"]
    ref = fresh.get(vs_turn) or windows.get(vs_turn)
    targets = [
        {
            "name": f"median at turn {last:,} <= {target_ms:g} ms",
            "value": last_median,
            "limit": target_ms,
            "pass": last_median <= target_ms,
            "disk_busy": windows[last]["disk_busy"],
        }
    ]
    if ref:
        limit = round(ratio * ref["median_ms"], 4)
        targets.append(
            {
                "name": f"median at turn {last:,} <= {ratio:g}x median at turn {vs_turn}",
                "value": last_median,
                "limit": limit,
                "pass": last_median <= limit,
                "ratio": round(last_median / ref["median_ms"], 3),
                "disk_busy": windows[last]["disk_busy"] or ref["disk_busy"],
            }
        )
    restart = rounds[0]["long_thread"]["restart"]
    if memory_mode == "default":
        # a probe that failed fails its target (value None), never drops it
        first = restart["warm"]["turns_ms"][0] if "warm" in restart else None
        limit = DEFAULT_MEMORY_TARGETS["restart"]
        targets.append(
            {
                "name": f"first turn of the {last + args.window - 1:,}-turn thread after a"
                f" restart (the embedding model loaded at start) <= {limit:g} ms",
                "value": first,
                "limit": limit,
                "pass": first is not None and first <= limit,
                "disk_busy": False,
            }
        )
    limit = round(bytes_ratio * storage["raw_text_bytes_per_turn"], 1)
    targets.append(
        {
            "name": f"bytes stored per turn <= {bytes_ratio:g}x raw text of a turn",
            "value": storage["bytes_per_turn"],
            "limit": limit,
            "pass": storage["bytes_per_turn"] <= limit,
            "ratio": storage["ratio"],
            "disk_busy": False,
        }
    )

    result = {
        "benchmark": "turn_cost",
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {**machine(), "loadavg_before": load_before},
        "settings": {
            "model": "test:echo",
            "store": store_name,
            "memory": memory_mode,
            "memory_settings": settings.memory.model_dump(),
            "history_messages": settings.history_messages,
            "store_traces": settings.store_traces,
            "system_prompt_chars": len(settings.system_prompt),
            "api": "await Chatbot.achat() in one event loop",
        },
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "wall_seconds": round(wall, 2),
        "message_chars": figures["message_chars"],
        "summary": {
            "fresh_threads": fresh,
            "long_thread_windows": windows,
            "long_thread_turns": turns,
            "long_thread_all_turns_per_round": all_turns,
            "drive_seconds_per_round": drive_s,
            "storage": storage,
            "fsync_probe_ms": {
                "min": min(probes),
                "median": statistics.median(probes),
                "max": max(probes),
                "count": len(probes),
            },
        },
        "targets": targets,
        "rounds": rounds,
    }

    # -- report ------------------------------------------------------------------------
    m = result["machine"]
    print(f"chatwright turn cost: test:echo, {store_name}")
    db_version = f"PostgreSQL {m['postgresql']}" if pg_server else f"SQLite {m['sqlite']}"
    print(f"{m['nproc']} CPUs, Python {m['python']}, {db_version}, {m['platform']}")
    print(f"load average before {load_before[0]:.2f}, after {m['loadavg'][0]:.2f}")
    mc = figures["message_chars"]
    print(
        f"user messages: {mc['min']}-{mc['max']} chars (median {mc['median']:g}); "
        f"{len(rounds)} round(s); window {args.window} turns; {args.fresh_threads} fresh "
        "threads per round"
    )
    print()
    header = (
        f"{'turn':>7}  {'measured over':<34} {'n':>4} {'median ms':>9} {'p90 ms':>7}"
        f" {'cpu ms':>6} {'load':>6} {'persist':>7}"
        + (f" {'pg cpu':>6}" if pg_server else "")
        + "  round medians"
    )
    print(header)
    print("-" * (len(header) + 10))
    for c in checkpoints:
        rows = []
        if c in fresh:
            rows.append((f"turn {c} of fresh threads", fresh[c]))
        w = windows[c]
        rows.append((f"one thread, turns {w['turns'][0]:,}..{w['turns'][1]:,}", w))
        for label, s in rows:
            st = s["stages_median_ms"]
            rm = " ".join(
                f"{v:.2f}{'*' if b else ''}"
                for v, b in zip(s["round_medians_ms"], s["round_disk_busy"], strict=True)
            )
            flag = " (disk busy)" if s["disk_busy"] else ""
            pg = ""
            if pg_server:
                pg = f" {s.get('server_cpu_mean_ms') or float('nan'):>6.3f}"
            print(
                f"{c:>7,}  {label:<34} {s['n_per_round']:>4} {s['median_ms']:>9.3f}"
                f" {s['p90_ms']:>7.3f} {s['cpu_median_ms']:>6.3f} {st.get('load', 0):>6.3f}"
                f" {st.get('persist', 0):>7.3f}{pg}  {rm}{flag}"
            )
    print("median, p90: wall ms per turn, median over rounds; cpu ms: the process's CPU time per")
    print("turn; load, persist: those stages' ms from the turns' own traces (each includes one")
    print("synchronous commit); * = that round ran on a busy disk (left out of the headline when")
    print("another round did not)")
    if pg_server:
        print("pg cpu: the PostgreSQL server's processes' CPU ms per turn (mean; /proc ticks of")
        print("10 ms summed over the window's turns)")
    print()
    print(
        f"drove one thread to {turns:,} turns in "
        + ", ".join(f"{d:.1f}" for d in drive_s)
        + " s; all its turns, median wall "
        + ", ".join(f"{a['median_ms']:.3f}" for a in all_turns)
        + " ms, cpu "
        + ", ".join(f"{a['cpu_median_ms']:.3f}" for a in all_turns)
        + " ms (per round)"
    )
    if pg_server:
        print(
            "  PostgreSQL server CPU per turn over all of them (mean): "
            + ", ".join(f"{a['server_cpu_mean_ms'] or float('nan'):.3f}" for a in all_turns)
            + " ms; engine process, mean: "
            + ", ".join(f"{a['cpu_mean_ms']:.3f}" for a in all_turns)
            + " ms"
        )
    fp = result["summary"]["fsync_probe_ms"]
    print(
        f"disk: 4 KiB write + fdatasync, {fp['count']} probes: min {fp['min']:.3f}, "
        f"median {fp['median']:.3f}, max {fp['max']:.3f} ms"
    )
    print()
    print(
        f"storage: {storage['bytes_start']:,} -> {storage['bytes_end']:,} bytes after "
        f"{turns:,} turns "
        + (
            "(pg_database_size after CHECKPOINT)"
            if pg_server
            else "(db + wal after wal_checkpoint(TRUNCATE))"
        )
    )
    print(
        f"  {storage['bytes_per_turn']:,.1f} bytes stored per turn vs "
        f"{storage['raw_text_bytes_per_turn']:,.1f} bytes of raw text per turn "
        f"(x{storage['ratio']:.2f})"
    )
    p = storage["payload_per_turn"]
    print(
        f"  payload per turn: message text {p['messages.text']:,.0f} B, message json "
        f"{p['messages.data']:,.0f} B, trace json {p['traces.data']:,.0f} B"
    )
    if storage["per_table_bytes_end"]:
        parts = ", ".join(
            f"{k} {v / turns:,.0f}"
            for k, v in storage["per_table_bytes_end"].items()
            if v / turns >= 1
        )
        print(f"  pages per turn by table (bytes): {parts}")
    segs = ", ".join(
        f"{s['after_turn']:,}-{s['to_turn']:,}: {s['bytes_per_turn']:,.0f}"
        for s in storage["segments"]
    )
    print(f"  bytes/turn by stretch of the thread: {segs}")
    restart = rounds[0]["long_thread"]["restart"]
    if "warm" in restart:
        cold, warm = restart["cold"], restart["warm"]
        print(
            f"after a restart (a new process): bot opened in {cold['open_ms']:.0f} ms; the long"
            f" thread's next turn {cold['turns_ms'][0]:.1f} ms cold; with the embedding model"
            f" loaded first ({warm['warm_ms']:.0f} ms),"
            f" {', '.join(f'{t:.1f}' for t in warm['turns_ms'])} ms"
        )
    else:
        print(f"restart probe failed: {restart.get('error')}")
    print()
    failed = []
    for t in targets:
        verdict = "PASS" if t["pass"] else "FAIL"
        extra = f" (x{t['ratio']:.2f})" if "ratio" in t else ""
        busy = " [measured on a busy disk]" if t["disk_busy"] else ""
        value = "no value" if t["value"] is None else format(t["value"], "g")
        print(f"{verdict}  {t['name']}: {value} vs limit {t['limit']:g}{extra}{busy}")
        if not t["pass"]:
            failed.append(t["name"])
    print()
    print(
        "all targets met" if not failed else f"{len(failed)} target(s) missed: " + "; ".join(failed)
    )
    if profile_text:
        print()
        print(profile_text)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results written to {args.out} ({wall:.1f} s)")
    return 0  # a measurement: a missed target is reported, not an error


if __name__ == "__main__":
    sys.exit(main())
