"""Durability under ``kill -9``: is every acknowledged message still there after a crash?

Each cycle starts ``chatwright serve`` (SQLite, the same data directory every cycle, model
``test:slow`` so turns are in flight when the blow comes), runs ``--workers`` clients sending
turns back to back on their own threads, and kills the server with SIGKILL after a random
0.2-1.0 s. A message counts as **acknowledged** when its turn's ``start`` event arrived (the
API's promise: the message is stored before that event is sent). After the last cycle the
store is opened directly and every acknowledged message is looked for in its thread; the
figure is how many are missing (target: 0). Threads are also checked for two user messages
in a row with no answer or marker between them (the recovery marks an interrupted turn).

Run: ``.venv/bin/python benchmarks/kill_cycles.py [--cycles 100] [--workers 20]``; writes
``benchmarks/results/kill_cycles.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from server_load import free_port, machine_load, request_bytes, start_server

RESULTS = Path(__file__).parent / "results" / "kill_cycles.json"


async def client(port: int, thread: str, prefix: str, acked: list[str], stop: asyncio.Event):
    """Turns back to back until the server dies; acknowledged texts go to ``acked``."""
    n = 0
    while not stop.is_set():
        text = f"{prefix}-{n}"
        n += 1
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        try:
            writer.write(request_bytes("127.0.0.1", port, thread, text))
            await writer.drain()
            while line := await reader.readline():
                if line.startswith(b"event: start"):
                    acked.append(text)
                if line.startswith((b"event: done", b"event: error")):
                    break
        except (OSError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()


async def cycle(port: int, cycle_no: int, workers: int, acked: dict[str, list[str]]) -> None:
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(
            client(port, f"w{w}", f"c{cycle_no}-w{w}", acked.setdefault(f"w{w}", []), stop)
        )
        for w in range(workers)
    ]
    await asyncio.sleep(random.uniform(0.2, 1.0))
    stop.set()
    return tasks  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    random.seed(args.seed)
    acked: dict[str, list[str]] = {}
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        for c in range(args.cycles):
            port = free_port()
            server = start_server(port, data_dir, "test:slow")

            async def run(port: int = port, c: int = c, server=server) -> None:
                tasks = await cycle(port, c, args.workers, acked)
                os.kill(server.pid, signal.SIGKILL)  # mid-turn, mid-commit: no warning
                await asyncio.gather(*tasks, return_exceptions=True)

            asyncio.run(run())
            server.wait()
            print(f"\rcycle {c + 1}/{args.cycles}: {sum(map(len, acked.values()))} acked", end="")
        print()
        from chatwright.config import Settings
        from chatwright.store import open_store

        store = open_store(Settings(data_dir=data_dir))
        missing, doubled = 0, 0
        for thread, texts in acked.items():
            stored = [m.message for m in store.messages("local", thread)]
            users = {m.text for m in stored if m.role == "user"}
            missing += sum(t not in users for t in texts)
            doubled += sum(a.role == b.role == "user" for a, b in itertools.pairwise(stored))
        store.close()
    result = {
        "cycles": args.cycles,
        "workers": args.workers,
        "acknowledged": sum(map(len, acked.values())),
        "missing": missing,
        "user_messages_in_a_row": doubled,
        "seconds": round(time.time() - started, 1),
        "machine": machine_load(),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    verdict = "PASS" if missing == 0 else "FAIL"
    print(f"{verdict}: {missing} of {result['acknowledged']} acknowledged messages missing")


if __name__ == "__main__":
    main()
