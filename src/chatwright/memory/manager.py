"""Memory for a chatbot: loads what a turn needs, builds its context, keeps the summary current.

The bot calls :meth:`Memory.load` and :meth:`Memory.build` in a turn's load and context stages,
and :meth:`Memory.after_turn` once the answer is stored. Summary updates run in a background
thread, after the answer was delivered; one that fails leaves a note for the next turn's
trace and is retried after it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from chatwright.config import MemorySettings
from chatwright.memory.context import (
    Budget,
    Context,
    Entry,
    Passage,
    Recalled,
    Turn,
    build_context,
    group_turns,
)
from chatwright.memory.summary import select_batch, summarize
from chatwright.memory.tokens import TokenCounter, count_message
from chatwright.models.base import Model
from chatwright.store.base import Store, StoredMessage, Summary, ThreadInfo
from chatwright.types import Message

__all__ = ["STRATEGIES", "Loaded", "Memory", "Recall"]

# How a memory saved from an untrusted turn (see trust.py) is shown to the model: as the
# document's words, not the user's.
UNVERIFIED = "(unverified: saved while reading a document or tool output)"

log = logging.getLogger("chatwright.memory")

STRATEGIES = ("window", "tokens", "summary")
_DEFAULT_WINDOW = 8192
_CACHED_THREADS = 256
_INDEX_BATCH = 500  # turns indexed per background job at most


class Recall(Protocol):
    """Indexes a thread's older turns and finds those that match a query."""

    def recall(
        self,
        owner: str,
        thread_id: str,
        query: str,
        *,
        k: int,
        before_seq: int,
        notes: list[str] | None = None,
    ) -> list[Recalled]:
        """The ``k`` best matches that start before ``before_seq``; what degraded (an embedder
        that failed: keywords only) is said in ``notes``."""
        ...

    def index_turns(self, owner: str, thread_id: str, turns: Sequence[Turn]) -> int: ...

    def indexed_through(self, owner: str, thread_id: str) -> int:
        """The last seq of the active branch's path whose turn is indexed (0: none): each
        path has its own, so turns of a path left behind are indexed when it is back."""
        ...


@dataclass
class Loaded:
    """What a turn read from the store for its context."""

    strategy: Literal["window", "tokens", "summary"]
    entries: list[Entry]
    summary: Summary | None = None
    user_memory: list[str] = field(default_factory=list)  # newest first
    user_memory_untrusted: list[bool] = field(default_factory=list)  # saved from untrusted turns
    notes: list[str] = field(default_factory=list)


class Memory:
    def __init__(
        self,
        store: Store,
        settings: MemorySettings,
        model: Model,
        counter: TokenCounter,
        *,
        history_messages: int,
        answer_tokens: int,
        summarizer: Model | None = None,
        recall: Recall | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.model = model
        self.counter = counter
        self.history_messages = history_messages
        self.answer_tokens = answer_tokens
        self.summarizer = summarizer or model
        self.recall = recall
        # Recent entries of recently active threads. Messages are immutable and append-only, so
        # a turn only reads (and decodes) what was added since the last one.
        self._recent: OrderedDict[tuple[str, str, float, int], list[Entry]] = OrderedDict()
        self._recent_lock = threading.Lock()
        self._jobs: dict[tuple[str, str], threading.Thread] = {}
        self._jobs_lock = threading.Lock()
        self._wanted: dict[tuple[str, str], int] = {}  # work asked for while a job ran
        self._closing = threading.Event()  # see close
        self._failures: dict[tuple[str, str], str] = {}

    # -- per turn ---------------------------------------------------------------------------
    def budget(self) -> Budget:
        s = self.settings
        total = s.context_tokens or getattr(self.model, "context_window", None) or _DEFAULT_WINDOW
        return Budget(
            total=total,
            answer=min(self.answer_tokens, total // 2),
            user_memory=s.user_memory_tokens,
            summary=s.summary_tokens,
            recall=s.recall_tokens,
            passages=s.passages_tokens,
            window_turns=s.window_turns,
        )

    def strategy_for(self, metadata: dict[str, Any]) -> Literal["window", "tokens", "summary"]:
        chosen = metadata.get("memory_strategy")
        return chosen if chosen in STRATEGIES else self.settings.strategy

    def count(self, message: Message) -> int:
        return count_message(message, self.counter)

    def _entry(self, stored: StoredMessage) -> Entry:
        tokens = stored.tokens if stored.tokens is not None else self.count(stored.message)
        return Entry(stored.seq, stored.created_at, stored.message, tokens)

    def load(self, owner: str, thread_id: str, *, before_seq: int | None = None) -> Loaded:
        """Recent history (before ``before_seq``), the latest summary and the user's memory."""
        info = self.store.find_thread(owner, thread_id)
        strategy = self.strategy_for(info.metadata if info else {})
        loaded = Loaded(strategy=strategy, entries=[])
        if self.counter.note:
            loaded.notes.append(self.counter.note)
        failure = self._failures.get((owner, thread_id))
        if failure:
            loaded.notes.append(f"the last summary update failed ({failure}); it is retried")
        if self.settings.recall and self.recall is None:
            loaded.notes.append("recall is on but no search index is configured")
        memories = list(reversed(self.store.list_memories(owner)))
        loaded.user_memory = [m.text for m in memories]
        loaded.user_memory_untrusted = [m.untrusted is not None for m in memories]
        if info is None:
            return loaded
        recent = self._recent_entries(owner, thread_id, info)
        end = before_seq if before_seq is not None else info.message_count + 1
        if strategy == "summary":
            loaded.summary = self.store.latest_summary(owner, thread_id)
        covered = loaded.summary.through_seq if loaded.summary else 0
        loaded.entries = [e for e in recent if covered < e.seq < end]
        return loaded

    def _recent_entries(self, owner: str, thread_id: str, info: ThreadInfo) -> list[Entry]:
        """The newest ``history_messages`` entries of the active branch's path, reading only
        what the cache lacks."""
        keep = self.history_messages + 1
        last_seq = info.message_count
        # created_at: a deleted, re-created id is new; branch: each path is cached apart
        key = (owner, thread_id, info.created_at, info.branch)
        with self._recent_lock:
            cached = self._recent.pop(key, None)
        have = cached[-1].seq if cached else 0
        if cached is None or not 0 <= last_seq - have < keep:
            entries = [self._entry(m) for m in self.store.recent(owner, thread_id, keep)]
        else:
            fresh = self.store.messages(owner, thread_id, after_seq=have)
            entries = (cached + [self._entry(m) for m in fresh])[-keep:]
        with self._recent_lock:
            self._recent[key] = entries
            while len(self._recent) > _CACHED_THREADS:
                self._recent.popitem(last=False)
        return entries

    def build(
        self,
        owner: str,
        thread_id: str,
        loaded: Loaded,
        new_message: Message,
        system_prompt: str | None,
        *,
        new_tokens: int | None = None,
        passages: Sequence[Passage] = (),
    ) -> Context:
        recalled: list[Recalled] = []
        if self._recalling():
            first = loaded.entries[0].seq if loaded.entries else None
            if first is not None and first > 1:
                recalled = self._recall(owner, thread_id, new_message.text, first, loaded)
        context = build_context(
            strategy=loaded.strategy,
            system_prompt=system_prompt,
            history=loaded.entries,
            new_message=new_message,
            budget=self.budget(),
            counter=self.counter,
            summary=loaded.summary,
            recalled=recalled,
            user_memory=[
                f"{text} {UNVERIFIED}" if bad else text
                for text, bad in zip(loaded.user_memory, loaded.user_memory_untrusted, strict=False)
            ],
            passages=passages,
        )
        context.notes[:0] = loaded.notes
        return context

    def _recall(
        self, owner: str, thread_id: str, query: str, before_seq: int, loaded: Loaded
    ) -> list[Recalled]:
        """Recalled turns; a failing recall costs the turn its recall, never its answer."""
        assert self.recall is not None
        k = self.settings.recall_k
        try:
            found = self.recall.recall(
                owner,
                thread_id,
                query,
                k=2 * k,  # some may be on another branch: dropped below
                before_seq=before_seq,
                notes=loaded.notes,
            )
            # A recalled turn is on the active branch's path if its last message is (the
            # path up to a message is unique): other branches' turns never leak in.
            kept = self.store.on_path(owner, thread_id, [r.last_seq or r.first_seq for r in found])
        except Exception as e:
            log.warning("recall failed for thread %s: %s", thread_id, e)
            loaded.notes.append(f"recall failed, answered without it: {type(e).__name__}: {e}")
            return []
        found = [r for r in found if (r.last_seq or r.first_seq) in kept][:k]
        return [replace(r, tokens=self.counter.count(r.text)) for r in found]

    def _recalling(self) -> bool:
        return self.settings.recall and self.recall is not None and self.settings.recall_k > 0

    # -- after the answer -----------------------------------------------------------------
    def after_turn(self, owner: str, thread_id: str, loaded: Loaded, context: Context) -> bool:
        """Start background work if turns fell out of the window: index them for recall, and
        fold them into the summary once there is enough. True: a new job started. (Thread
        search indexes a thread's text when a search asks for it, not per turn: a turn's cost
        and storage stay those of the conversation.)"""
        covered = loaded.summary.through_seq if loaded.summary else 0
        window_start = context.window_start_seq
        if window_start is None:  # nothing of the history fit: all of it is out of the window
            window_start = loaded.entries[-1].seq + 1 if loaded.entries else covered + 1
        to_index = self._recalling() and window_start - 1 > self._indexed_through(owner, thread_id)
        if not (to_index or self._summary_due(loaded, window_start)):
            return False
        return self._start(owner, thread_id, window_start)

    def _indexed_through(self, owner: str, thread_id: str) -> int:
        assert self.recall is not None
        return self.recall.indexed_through(owner, thread_id)

    def _summary_due(self, loaded: Loaded, window_start: int) -> bool:
        if loaded.strategy != "summary":
            return False
        covered = loaded.summary.through_seq if loaded.summary else 0
        if window_start - 1 <= covered:
            return False
        first_loaded = loaded.entries[0].seq if loaded.entries else window_start
        if first_loaded <= covered + 1:  # every pending message was loaded: count them here
            pending = sum(e.tokens for e in loaded.entries if e.seq < window_start)
            return pending >= self.settings.summarize_after_tokens
        return True

    def _start(self, owner: str, thread_id: str, before_seq: int) -> bool:
        """Run the thread's background work up to ``before_seq``: in a new job, or, if one is
        running, by that job once it has finished what it is doing."""
        key = (owner, thread_id)
        with self._jobs_lock:
            if key in self._jobs:  # a job leaves this dict (under the lock) only once done
                self._wanted[key] = max(self._wanted.get(key, 0), before_seq)
                return False
            job = threading.Thread(
                target=self._job,
                args=(owner, thread_id, before_seq),
                name=f"chatwright-memory-{thread_id}",
            )
            self._jobs[key] = job
        job.start()
        return True

    def _job(self, owner: str, thread_id: str, before_seq: int) -> None:
        key = (owner, thread_id)
        while True:
            self._run_update(owner, thread_id, before_seq)
            with self._jobs_lock:
                wanted = self._wanted.pop(key, 0)
                if wanted <= before_seq:
                    del self._jobs[key]
                    return
            before_seq = wanted

    def _run_update(self, owner: str, thread_id: str, before_seq: int) -> None:
        key = (owner, thread_id)
        try:
            if self._recalling():
                self._index_all(owner, thread_id, before_seq)
            if self.strategy_for(self._metadata(owner, thread_id)) == "summary":
                asyncio.run(self.update_summary(owner, thread_id, before_seq=before_seq))
            self._failures.pop(key, None)
        except Exception as e:  # kept for the next turn's trace; retried after it
            self._failures[key] = f"{type(e).__name__}: {e}"[:300]
            log.warning("background memory work for thread %s failed: %s", thread_id, e)

    def _metadata(self, owner: str, thread_id: str) -> dict[str, Any]:
        info = self.store.find_thread(owner, thread_id)
        return info.metadata if info else {}

    def _index_all(self, owner: str, thread_id: str, before_seq: int) -> None:
        """Index batch after batch until every turn before ``before_seq`` is (a backlog
        builds up while turns come back to back: the embedding of old turns waits for the
        pauses between them). Stops when a batch moves the path's mark no further (the
        active branch changed meanwhile: the next turn's job goes on from its mark)."""
        assert self.recall is not None
        mark = self.recall.indexed_through(owner, thread_id)
        while self.index_old_turns(owner, thread_id, before_seq=before_seq):
            if self._closing.is_set():  # the rest is indexed by the next turn's job
                return
            moved = self.recall.indexed_through(owner, thread_id)
            if moved <= mark:
                return
            mark = moved

    def index_old_turns(self, owner: str, thread_id: str, *, before_seq: int) -> int:
        """Index for recall the whole turns that ended before ``before_seq`` (a batch)."""
        assert self.recall is not None
        after = self.recall.indexed_through(owner, thread_id)
        entries: list[Entry] = []
        for stored in self.store.messages(owner, thread_id, after_seq=after):
            if stored.seq >= before_seq:
                break
            entries.append(self._entry(stored))
            if len(entries) > 4 * _INDEX_BATCH:
                break
        turns: list[Turn] = group_turns(entries)[:_INDEX_BATCH]
        if len(turns) > 1 and entries and entries[-1].seq + 1 < before_seq:
            turns = turns[:-1]  # the last turn may continue past what was read
        return self.recall.index_turns(owner, thread_id, turns)

    async def update_summary(
        self, owner: str, thread_id: str, *, before_seq: int
    ) -> Summary | None:
        """Fold the out-of-window messages after the latest summary (one batch) into it."""
        previous = self.store.latest_summary(owner, thread_id)
        after = previous.through_seq if previous else 0
        limit = self.settings.summarize_batch_tokens
        pending: list[Entry] = []
        used = 0
        for stored in self.store.messages(owner, thread_id, after_seq=after):
            if stored.seq >= before_seq or used > limit:
                break
            entry = self._entry(stored)
            pending.append(entry)
            used += entry.tokens
        if sum(e.tokens for e in pending) < self.settings.summarize_after_tokens:
            return None
        batch = select_batch(pending, limit)
        summary = await summarize(
            self.summarizer,
            previous,
            batch,
            self.counter,
            max_tokens=self.settings.summary_tokens,
            timeout_s=self.settings.summary_timeout_s,
        )
        self.store.save_summary(owner, thread_id, summary)
        return summary

    def close(self) -> None:
        """Finish the batches in progress and start no other (a long backlog is left for the
        next process: what is indexed is read back from the index), then wait for them."""
        self._closing.set()
        self.wait()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for background work (tests, and before a process exits)."""
        while True:
            with self._jobs_lock:
                jobs = list(self._jobs.values())
            if not jobs:
                return
            for job in jobs:
                job.join(timeout)
            if timeout is not None:
                return
