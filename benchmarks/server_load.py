"""Concurrent streaming turns against ``chatwright serve``, from a separate client process.

What it measures
----------------
The server runs in its own process (``python -m chatwright serve`` on loopback, a fresh data
directory per mode; the default embedder is turned off so no embedding model is loaded; no
per-user turn limit or per-address connection limit, as every client here is the local user
on 127.0.0.1). This process is the client. Every turn is
``POST /api/threads/{id}/messages`` with ``stream: true``, read as Server-Sent Events until the
stream ends.

* **time to first event**: from starting the request (connecting included, when the turn
  opens a connection) to the first SSE ``event:`` line received;
* **completion**: from starting the request to the ``done`` event;
* **errors**: non-200 answers, ``error`` events, streams that end without ``done``, lost
  connections, turns over ``--timeout``.

Two modes (``--mode both``, the default, runs them one after the other, each on its own
server):

* **burst**: ``--streams`` turns (each on its own thread, so turns do not queue behind one
  another's thread lock) released at the same instant, ``--rounds`` times, against
  ``--burst-model`` (default ``test:echo``, which answers at once). This is the worst case: a
  single-process server gets all of them at once.
* **sustained**: ``--streams`` client workers, started evenly over ``--ramp`` seconds, each
  running turns back to back on its own thread for ``--duration`` seconds after the ramp,
  against ``--sustained-model`` (default ``test:slow``: one word per 50 ms, so the streams
  really are open at the same time). Messages have ``--words`` words, so an answer streams
  ``--words`` + 1 pieces. Turns started during the ramp are warm-up and not counted; turns
  started in the window are counted when they end. Reported: percentiles over all counted
  turns, turns/s, and how many streams were open at once (between their first event and
  ``done``, sampled by the client every 10 ms: mean, min, max).

Both modes also report the CPU time the server and the client used per turn (from
``/proc``, Linux), which is steadier than wall-clock figures on a busy machine.

The client speaks HTTP/1.1 over raw asyncio sockets (no HTTP library): an earlier version
used ``httpx``, whose own cost (4.5 ms of CPU per streamed turn, more than the server's) was
the larger part of what it measured on a 2-core machine.

Targets (printed PASS/FAIL per mode; exit code 0 either way, this is a measurement): 200
concurrent streams, p99 time to first event <= 100 ms, no errors, on the 2-core machine.

Replicas (``--replicas N``, PostgreSQL): N ``chatwright serve`` processes on one database
(``--database-url URL``: a server where that user may create databases, a fresh database per
mode; or, without it, a throwaway ``pgserver`` that the script starts), each on its own port.
The client spreads turns over them round-robin: a worker's n-th turn goes to replica
(worker + n) mod N, one keep-alive connection per worker and replica; in a burst, turn i goes
to replica i mod N. Server CPU is then the replicas' together, and PostgreSQL's processes'
CPU is reported beside it. ``--database-url`` with ``--replicas 1`` measures one replica on
PostgreSQL.

Run: ``.venv/bin/python benchmarks/server_load.py [--mode both|burst|sustained]
[--streams 200] [--rounds 3] [--duration 10] [--ramp 1] [--words 20]
[--replicas N --database-url URL]``; writes ``benchmarks/results/server_load.json`` (with
PostgreSQL: ``server_load_postgres_<N>.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
import _postgres  # noqa: E402  (benchmarks/_postgres.py)

RESULTS = ROOT / "results" / "server_load.json"
#: ``--floor``: the model name that starts ``_floor_app.py`` instead of chatwright.
FLOOR = "floor"
TARGET_P99_MS = 100.0
_ALPHABET = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
WORDS = (_ALPHABET + "november oscar papa quebec romeo sierra tango uniform victor").split()


# -- the server -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    port: int, data_dir: Path, model: str, database_url: str | None = None
) -> subprocess.Popen[bytes]:
    """``chatwright serve`` on loopback with ``model``; returns once it answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATWRIGHT_")}
    env.update(CHATWRIGHT_EMBEDDER="", CHATWRIGHT_DATA_DIR=str(data_dir))
    # Every simulated client is the local user on 127.0.0.1: lift the per-user turn and
    # per-address connection limits, which would refuse all but a few of them (429).
    env.update(
        CHATWRIGHT_SERVER__MAX_TURNS_PER_USER="0",
        CHATWRIGHT_SERVER__MAX_CONNECTIONS_PER_CLIENT="0",
    )
    if database_url:
        env.update(CHATWRIGHT_DATABASE_URL=database_url)
    command = [sys.executable, "-m", "chatwright", "serve", "--model", model]
    command += ["--port", str(port), "--log-level", "warning"]
    if model == FLOOR:  # the same uvicorn, serving an app that does no work (_floor_app.py)
        command = [sys.executable, "-m", "uvicorn", "_floor_app:app", "--app-dir", str(ROOT)]
        command += ["--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            err = server.stderr.read().decode() if server.stderr else ""
            raise SystemExit(f"server exited: {err}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/me", timeout=1):
                return server
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not start within 60 s")


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of process ``pid`` (this process when None), or None."""
    if pid is None:
        return time.process_time()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_load() -> dict[str, Any]:
    """Load average and CPU pressure (Linux PSI) now: how busy the machine was."""
    out: dict[str, Any] = {}
    try:
        out["loadavg_1m"] = float(Path("/proc/loadavg").read_text().split()[0])
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0].split()
        out["cpu_pressure_avg10"] = float(some[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        pass
    return out


# -- the client: HTTP/1.1 over a raw socket, reading Server-Sent Events --------------------------
@dataclass
class Turn:
    """One request's outcome (times in seconds from its start)."""

    start: float
    first: float | None = None
    done: float | None = None
    error: str | None = None
    status: int | None = None
    events: int = 0


@dataclass
class _Response:
    turn: Turn
    finished: asyncio.Future[None]
    chunked: bool = False
    length: int = 0
    body: bytes = b""
    sse: bytes = b""
    in_body: bool = False
    error_body: bytes = b""


class Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time (HTTP/1.1, no pipelining)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.response: _Response | None = None
        self.closed = False
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response, self.response = self.response, None
        if response is not None and not response.finished.done():
            response.turn.error = f"connection lost ({exc or 'closed by the server'})"
            response.finished.set_result(None)

    def send(self, request: bytes, turn: Turn) -> asyncio.Future[None]:
        assert self.transport is not None and self.response is None
        future = asyncio.get_running_loop().create_future()
        self.response = _Response(turn, future)
        self.buffer = b""
        self.transport.write(request)
        return future

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:
            return
        self.buffer += data
        now = time.perf_counter()
        if not response.in_body and not self._head(response):
            return
        if response.chunked:
            self._chunks(response, now)
        elif len(self.buffer) >= response.length:
            response.body, self.buffer = self.buffer[: response.length], b""
            self._finish(response)

    def _head(self, response: _Response) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
        lines = head.split(b"\r\n")
        response.turn.status = int(lines[0].split()[1])
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding" and b"chunked" in value.lower():
                response.chunked = True
            elif name == b"content-length":
                response.length = int(value.strip())
        response.in_body = True
        return True

    def _chunks(self, response: _Response, now: float) -> None:
        while True:
            line_end = self.buffer.find(b"\r\n")
            if line_end < 0:
                return
            size = int(self.buffer[:line_end].split(b";")[0], 16)
            if size == 0:
                if len(self.buffer) < line_end + 4:
                    return  # the blank line that ends the body is still to come
                self.buffer = b""
                self._finish(response)
                return
            start = line_end + 2
            if len(self.buffer) < start + size + 2:
                return
            self._sse(response, self.buffer[start : start + size], now)
            self.buffer = self.buffer[start + size + 2 :]

    def _sse(self, response: _Response, data: bytes, now: float) -> None:
        if response.turn.status != 200:
            response.error_body += data
            return
        text = response.sse + data
        lines = text.split(b"\n")
        response.sse = lines.pop()
        turn = response.turn
        for line in lines:
            if not line.startswith(b"event:"):
                continue
            name = line[6:].strip()
            turn.events += 1
            if turn.first is None:
                turn.first = now - turn.start
            if name == b"done":
                turn.done = now - turn.start
            elif name == b"error":
                turn.error = "error event"

    def _finish(self, response: _Response) -> None:
        self.response = None
        turn = response.turn
        if turn.status != 200:
            body = (response.body or response.error_body)[:200]
            turn.error = f"HTTP {turn.status}: {body!r}"
        elif turn.done is None and turn.error is None:
            turn.error = "stream ended without done"
        if not response.finished.done():
            response.finished.set_result(None)


def request_bytes(host: str, port: int, thread: str, text: str) -> bytes:
    body = json.dumps({"text": text, "stream": True}).encode()
    head = (
        f"POST /api/threads/{thread}/messages HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Accept: text/event-stream\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Worker:
    """A client that keeps a connection to each server (replica) between turns, reconnecting
    when one was closed."""

    def __init__(self, host: str, ports: list[int], timeout: float) -> None:
        self.host, self.ports, self.timeout = host, ports, timeout
        self.conns: dict[int, Connection] = {}
        self.current: Turn | None = None  # the turn under way, or the last one

    async def turn(self, thread: str, text: str, replica: int = 0) -> Turn:
        """One turn, sent to ``ports[replica % len(ports)]``."""
        port = self.ports[replica % len(self.ports)]
        turn = self.current = Turn(start=time.perf_counter())
        try:
            conn = self.conns.get(port)
            if conn is None or conn.closed:
                loop = asyncio.get_running_loop()
                _, conn = await loop.create_connection(Connection, self.host, port)
                self.conns[port] = conn
            finished = conn.send(request_bytes(self.host, port, thread, text), turn)
            await asyncio.wait_for(finished, self.timeout)
        except (TimeoutError, OSError) as e:
            turn.error = f"{type(e).__name__}: {e}"
            self.close(port)
        return turn

    def close(self, port: int | None = None) -> None:
        for p in [port] if port is not None else list(self.conns):
            conn = self.conns.pop(p, None)
            if conn is not None and conn.transport is not None:
                conn.transport.close()


# -- figures ----------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def distribution(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(values), 1),
        "p90": round(pct(values, 0.90), 1),
        "p99": round(pct(values, 0.99), 1),
        "max": round(max(values), 1),
    }


def summarize(turns: list[Turn]) -> dict[str, Any]:
    firsts = [t.first * 1000 for t in turns if t.first is not None]
    dones = [t.done * 1000 for t in turns if t.done is not None]
    errors = [t.error for t in turns if t.error]
    out: dict[str, Any] = {"turns": len(turns), "errors": len(errors)}
    if errors:
        out["first_errors"] = sorted(set(errors))[:3]
    if firsts:
        out["first_event_ms"] = distribution(firsts)
    if dones:
        out["completion_ms"] = distribution(dones)
    return out


@dataclass
class Servers:
    """Where the servers listen, their processes (for their CPU), PostgreSQL's (or None)."""

    host: str
    ports: list[int]
    pids: list[int | None]
    postgres: _postgres.ServerCpu | None = None


def _sum(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


@dataclass
class CpuMeter:
    """CPU seconds used by the servers (all replicas), PostgreSQL and this client between two
    points."""

    servers: Servers
    marks: tuple[float | None, float | None, float | None] = (None, None, None)

    def _now(self) -> tuple[float | None, float | None, float | None]:
        pg = self.servers.postgres
        return (
            _sum([cpu_seconds(pid) if pid is not None else None for pid in self.servers.pids]),
            cpu_seconds(None),
            pg.seconds() if pg is not None else None,
        )

    def start(self) -> None:
        self.marks = self._now()

    def per_turn(self, turns: int, wall_s: float) -> dict[str, Any]:
        (server0, client0, pg0), (server1, client1, pg1) = self.marks, self._now()
        out: dict[str, Any] = {}
        if server0 is not None and server1 is not None:
            out["server_cpu_ms_per_turn"] = round((server1 - server0) * 1000 / max(turns, 1), 2)
            out["server_cpu_cores"] = round((server1 - server0) / wall_s, 2)
        if pg0 is not None and pg1 is not None:
            out["postgres_cpu_ms_per_turn"] = round((pg1 - pg0) * 1000 / max(turns, 1), 2)
            out["postgres_cpu_cores"] = round((pg1 - pg0) / wall_s, 2)
        if client0 is not None and client1 is not None:
            out["client_cpu_ms_per_turn"] = round((client1 - client0) * 1000 / max(turns, 1), 2)
        return out


def message(i: int, words: int) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(words))


# -- burst ------------------------------------------------------------------------------------
async def burst_round(
    servers: Servers, streams: int, tag: str, cpu: CpuMeter, timeout: float
) -> dict[str, Any]:
    go = asyncio.Event()
    workers = [Worker(servers.host, servers.ports, timeout) for _ in range(streams)]

    async def one(i: int) -> Turn:
        await go.wait()
        return await workers[i].turn(f"{tag}-{i}", f"hello number {i}", replica=i)

    tasks = [asyncio.create_task(one(i)) for i in range(streams)]
    await asyncio.sleep(0.5)  # every task is waiting at the gate
    cpu.start()
    started = time.perf_counter()
    go.set()
    turns = await asyncio.gather(*tasks)
    wall = time.perf_counter() - started
    for worker in workers:
        worker.close()
    return {**summarize(turns), "wall_s": round(wall, 3), **cpu.per_turn(len(turns), wall)}


def run_burst(servers: Servers, args: argparse.Namespace) -> dict[str, Any]:
    cpu = CpuMeter(servers)
    asyncio.run(burst_round(servers, 5, "warmup", cpu, args.timeout))
    rounds = []
    for i in range(args.rounds):
        load = machine_load()
        summary = asyncio.run(burst_round(servers, args.streams, f"r{i}", cpu, args.timeout))
        rounds.append({**summary, "machine_load": load})
        print(json.dumps({"mode": "burst", "round": i + 1, **summary}), flush=True)
    worst = max(r.get("first_event_ms", {}).get("p99", float("inf")) for r in rounds)
    median = statistics.median(r.get("first_event_ms", {}).get("p99", float("inf")) for r in rounds)
    errors = sum(r["errors"] for r in rounds)
    return {
        "streams": args.streams,
        "model": args.burst_model,
        "rounds": rounds,
        "worst_p99_first_event_ms": worst,
        "median_p99_first_event_ms": median,
        "errors": errors,
        "pass": worst <= TARGET_P99_MS and errors == 0,
    }


# -- sustained --------------------------------------------------------------------------------
async def sustained_run(servers: Servers, args: argparse.Namespace) -> dict[str, Any]:
    streams, ramp, duration = args.streams, args.ramp, args.duration
    t0 = time.perf_counter()
    window_start, window_end = t0 + ramp, t0 + ramp + duration
    counted: list[Turn] = []
    warmup = 0
    clients = [Worker(servers.host, servers.ports, args.timeout) for _ in range(streams)]
    samples: list[int] = []  # streams open (first event seen, done not yet), every 10 ms
    cpu = CpuMeter(servers)

    async def worker(i: int) -> None:
        nonlocal warmup
        await asyncio.sleep(i * ramp / streams)
        client = clients[i]
        n = 0
        while time.perf_counter() < window_end:
            began = time.perf_counter()
            turn = await client.turn(f"s{i}", message(i + n, args.words), replica=i + n)
            n += 1
            if began >= window_start:
                counted.append(turn)
            else:
                warmup += 1
            if turn.error:
                await asyncio.sleep(0.1)  # no hot loop against a server that refuses
        client.close()

    def streaming(turn: Turn | None) -> bool:
        return turn is not None and turn.first is not None and turn.done is None

    async def sampler() -> None:
        while time.perf_counter() < window_end:
            samples.append(sum(streaming(c.current) for c in clients))
            await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(worker(i)) for i in range(streams)]
    await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
    cpu.start()
    await asyncio.gather(sampler(), *tasks)
    wall = time.perf_counter() - window_start
    summary = summarize(counted)
    completed = sum(1 for t in counted if t.done is not None)
    return {
        **summary,
        "warmup_turns": warmup,
        "turns_per_s": round(completed / duration, 1),
        "open_streams": {
            "mean": round(statistics.mean(samples), 1) if samples else 0,
            "min": min(samples, default=0),
            "max": max(samples, default=0),
        },
        **cpu.per_turn(len(counted), wall),
    }


def run_sustained(servers: Servers, args: argparse.Namespace) -> dict[str, Any]:
    load = machine_load()
    result = asyncio.run(sustained_run(servers, args))
    print(json.dumps({"mode": "sustained", **result}), flush=True)
    p99 = result.get("first_event_ms", {}).get("p99", float("inf"))
    return {
        "streams": args.streams,
        "model": args.sustained_model,
        "ramp_s": args.ramp,
        "duration_s": args.duration,
        "words": args.words,
        **result,
        "machine_load": load,
        "machine_load_after": machine_load(),
        "pass": p99 <= TARGET_P99_MS and result["errors"] == 0,
    }


# -- main -------------------------------------------------------------------------------------
def with_server(
    args: argparse.Namespace, model: str, run: Any
) -> dict[str, Any]:  # run(servers, args) -> figures
    if args.url:
        host, _, port = args.url.removeprefix("http://").rstrip("/").partition(":")
        return run(Servers(host, [int(port or 80)], [args.pid]), args)  # type: ignore[no-any-return]
    database_url = None
    if args.pg_server:
        database_url = _postgres.fresh_database(args.pg_server)
    with tempfile.TemporaryDirectory() as tmp:
        processes: list[subprocess.Popen[bytes]] = []
        try:
            ports = []
            for i in range(args.replicas):
                ports.append(free_port())
                data = Path(tmp) / f"data-{i}"
                processes.append(start_server(ports[-1], data, model, database_url))
            postgres = _postgres.ServerCpu(database_url) if database_url else None
            servers = Servers("127.0.0.1", ports, [p.pid for p in processes], postgres)
            return run(servers, args)  # type: ignore[no-any-return]
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=60)
            if database_url:
                _postgres.drop_database(database_url)


def verdict(name: str, figures: dict[str, Any], key: str) -> str:
    p99 = figures.get(key) if key else figures.get("first_event_ms", {}).get("p99")
    return (
        f"{'PASS' if figures['pass'] else 'FAIL'} ({name}): {figures['streams']} concurrent "
        f"streams, p99 time to first event {p99} ms (target <= {TARGET_P99_MS:g}), "
        f"{figures['errors']} errors (target 0)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--mode", choices=["both", "burst", "sustained"], default="both")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="burst rounds")
    parser.add_argument("--duration", type=float, default=10.0, help="sustained: seconds")
    parser.add_argument("--ramp", type=float, default=1.0, help="sustained: start-up seconds")
    parser.add_argument("--words", type=int, default=20, help="sustained: words per message")
    parser.add_argument("--burst-model", default="test:echo")
    parser.add_argument("--sustained-model", default="test:slow")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per turn")
    parser.add_argument("--url", help="an already running server (default: start one)")
    parser.add_argument("--pid", type=int, help="with --url: the server's process, for its CPU")
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="chatwright serve processes on one PostgreSQL database, turns spread round-robin "
        "(more than 1 needs PostgreSQL: --database-url, else a pgserver is started)",
    )
    parser.add_argument(
        "--database-url",
        help="postgresql://... of a server where that user may create databases (a fresh "
        "database per mode); default: SQLite, or a throwaway pgserver with --replicas > 1",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: results/server_load.json (results/server_load_postgres_<N>.json on "
        "PostgreSQL with N replicas)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="measure the floor instead: the same uvicorn serving an app that does no work "
        "(_floor_app.py), i.e. what the machine and the HTTP stack cost alone",
    )
    args = parser.parse_args()
    if args.floor:
        if args.url or args.replicas > 1 or args.database_url:
            parser.error("--floor starts its own server: no --url, --replicas or --database-url")
        args.burst_model = args.sustained_model = FLOOR
        args.out = args.out or RESULTS.with_name("server_load_floor.json")
    if args.replicas < 1:
        parser.error("--replicas must be >= 1")
    if args.url and (args.replicas > 1 or args.database_url):
        parser.error("--url measures one running server: no --replicas or --database-url")
    args.pg_server = None
    if args.database_url or args.replicas > 1:
        args.pg_server = _postgres.server_url(args.database_url)
    if args.out is None:
        name = f"server_load_postgres_{args.replicas}.json" if args.pg_server else RESULTS.name
        args.out = RESULTS.with_name(name)
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "backend": "postgres" if args.pg_server else "sqlite",
        "replicas": args.replicas,
        # uvicorn uses these when the server's environment has them (the [server] extra)
        "server_speedups": {
            name: importlib.util.find_spec(name) is not None for name in ("uvloop", "httptools")
        },
        "target": {"streams": 200, "p99_first_event_ms": TARGET_P99_MS, "errors": 0},
    }
    lines = []
    if args.mode in ("both", "burst"):
        results["burst"] = with_server(args, args.burst_model, run_burst)
        lines.append(verdict("burst, worst round", results["burst"], "worst_p99_first_event_ms"))
    if args.mode in ("both", "sustained"):
        results["sustained"] = with_server(args, args.sustained_model, run_sustained)
        lines.append(verdict("sustained", results["sustained"], ""))
    for line in lines:
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
