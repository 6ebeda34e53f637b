"""What every backend does the same way on top of its own queries: the ``get_*`` that turn
"none found" into the error users see, the list/find pairs over one query each, the parts
shared per store, and the reads of a thread's branches (``branches.py``). A backend's store
class inherits :class:`StoreCommon` and provides ``find_thread``, ``append``, ``_summaries``,
``_collections``, ``_users``, and ``_reader``/``_writer``/``_stored`` for the branch queries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from chatwright.errors import ThreadNotFound, UserError
from chatwright.store import branches as br
from chatwright.store.base import (
    BranchInfo,
    CollectionInfo,
    SharedParts,
    StoredMessage,
    Summary,
    ThreadInfo,
    UserInfo,
)
from chatwright.types import Message, Trace

__all__ = ["StoreCommon", "prune_summaries"]

T = TypeVar("T")
_SUMMARY_PAGE = 32  # summaries' seqs read at a time looking for the path's newest


def prune_summaries(run: br.Run, pk: int, through_seq: int, keep: int) -> None:
    """After a summary through ``through_seq`` was saved: keep the newest ``keep`` summaries of
    the branch that message is on, and for each branch forked from it the newest one at or
    before the fork (where that branch's path starts from); delete that branch's others.
    Other branches' summaries are never touched, so a busy branch cannot prune a quiet one's
    (whose next update would then start again from the first message)."""
    branch = int(
        run(
            "SELECT COALESCE((SELECT branch FROM messages WHERE thread_pk = ? AND seq = ?), 0)",
            (pk, through_seq),
        )[0][0]
    )
    rows = run(  # a summary with no message at its through_seq (imported) counts as main's
        "SELECT s.through_seq FROM summaries s WHERE s.thread_pk = ? AND COALESCE((SELECT"
        " m.branch FROM messages m WHERE m.thread_pk = s.thread_pk AND m.seq = s.through_seq),"
        " 0) = ? ORDER BY s.through_seq DESC",
        (pk, branch),
    )
    seqs = [int(r[0]) for r in rows]
    if len(seqs) <= keep:
        return
    kept = set(seqs[:keep])
    for (fork_seq,) in run(
        "SELECT fork_seq FROM branches WHERE thread_pk = ? AND parent = ?", (pk, branch)
    ):
        anchor = next((s for s in seqs if s <= int(fork_seq)), None)
        if anchor is not None:
            kept.add(anchor)
    drop = [s for s in seqs if s not in kept]
    for start in range(0, len(drop), 500):
        part = drop[start : start + 500]
        run(
            "DELETE FROM summaries WHERE thread_pk = ? AND through_seq IN ("
            + ", ".join("?" for _ in part)
            + ")",
            (pk, *part),
        )


class StoreCommon:
    """The backend-independent half of a store (see the module's docstring)."""

    _shared: SharedParts
    _FOR_UPDATE = ""  # how a backend locks the thread row it forks (PostgreSQL: FOR UPDATE)
    _BATCH = 500

    # -- provided by each backend ---------------------------------------------------------
    def find_thread(self, owner: str, thread_id: str) -> ThreadInfo | None:
        raise NotImplementedError

    def append(
        self,
        owner: str,
        thread_id: str,
        messages: Sequence[Message],
        *,
        trace: Trace | None = None,
        create: bool = False,
        tokens: Sequence[int | None] | None = None,
    ) -> list[StoredMessage]:
        raise NotImplementedError

    def _summaries(self, owner: str, thread_id: str, order: str) -> list[Summary]:
        """The thread's summaries by ``through_seq``; ``order`` is ``"ASC"`` or
        ``"DESC"``."""
        raise NotImplementedError

    def _collections(self, owner: str, name: str | None) -> list[CollectionInfo]:
        raise NotImplementedError

    def _users(self, name: str | None) -> list[UserInfo]:
        raise NotImplementedError

    def _reader(self) -> AbstractContextManager[br.Run]:
        """A ``run(sql, params)`` to read with (``?`` placeholders)."""
        raise NotImplementedError

    def _writer(self) -> AbstractContextManager[br.Run]:
        """A ``run(sql, params)`` inside one atomic write."""
        raise NotImplementedError

    def _stored(self, row: tuple[Any, ...]) -> StoredMessage:
        """A message row (``branches.MESSAGE_COLUMNS``) as a StoredMessage."""
        raise NotImplementedError

    # -- messages and branches: the active branch's path ----------------------------------
    def recent(
        self, owner: str, thread_id: str, limit: int, *, before_seq: int | None = None
    ) -> list[StoredMessage]:
        with self._reader() as run:
            pk, _, branch = br.thread_row(run, owner, thread_id)
            rows = br.recent_rows(run, pk, br.chain(run, pk, branch), limit, before_seq)
        return [self._stored(row) for row in rows]

    def messages(
        self, owner: str, thread_id: str, *, after_seq: int = 0, all_branches: bool = False
    ) -> Iterator[StoredMessage]:
        with self._reader() as run:
            pk, _, branch = br.thread_row(run, owner, thread_id)
            links = None if all_branches else br.chain(run, pk, branch)
        while True:
            with self._reader() as run:  # not held between batches
                rows = br.path_rows(run, pk, links, after_seq, self._BATCH)
            for row in rows:
                yield self._stored(row)
            if len(rows) < self._BATCH:
                return
            after_seq = rows[-1][0]

    def branches(self, owner: str, thread_id: str, *, counts: bool = True) -> list[BranchInfo]:
        with self._reader() as run:
            pk, _, _ = br.thread_row(run, owner, thread_id)
            created = run("SELECT created_at FROM threads WHERE pk = ?", (pk,))[0][0]
            return br.list_branches(run, pk, float(created), counts=counts)

    def fork(self, owner: str, thread_id: str, after_seq: int) -> BranchInfo:
        with self._writer() as run:
            pk, _, _ = br.thread_row(run, owner, thread_id, self._FOR_UPDATE)
            return br.fork(run, pk, after_seq, time.time())

    def switch_branch(self, owner: str, thread_id: str, branch: int) -> ThreadInfo:
        with self._writer() as run:
            pk, _, _ = br.thread_row(run, owner, thread_id, self._FOR_UPDATE)
            br.switch(run, pk, branch)
        return self.get_thread(owner, thread_id)

    def on_path(self, owner: str, thread_id: str, seqs: Sequence[int]) -> set[int]:
        with self._reader() as run:
            pk, _, branch = br.thread_row(run, owner, thread_id)
            return br.on_path(run, pk, br.chain(run, pk, branch), seqs)

    # -- the same for every backend -------------------------------------------------------
    def shared(self, key: Any, build: Callable[[], T]) -> T:
        return self._shared.get(key, build)

    async def append_async(
        self,
        owner: str,
        thread_id: str,
        messages: Sequence[Message],
        *,
        trace: Trace | None = None,
        create: bool = False,
        tokens: Sequence[int | None] | None = None,
    ) -> list[StoredMessage]:
        """``append`` in a worker thread (a backend may do better: SQLite commits in groups)."""
        return await asyncio.to_thread(
            self.append, owner, thread_id, messages, trace=trace, create=create, tokens=tokens
        )

    def get_thread(self, owner: str, thread_id: str) -> ThreadInfo:
        info = self.find_thread(owner, thread_id)
        if info is None:
            raise ThreadNotFound(thread_id)
        return info

    def latest_summary(self, owner: str, thread_id: str) -> Summary | None:
        """The newest summary whose last message is not on another branch: the path up to
        that message is the one it summarized (another branch's summary is never used)."""
        # Newest first, a page of seqs at a time: a thread keeps summaries per branch, and the
        # path's newest is usually on the first page.
        with self._reader() as run:
            pk, _, branch = br.thread_row(run, owner, thread_id)
            links = br.chain(run, pk, branch)
            offset = 0
            while True:
                seqs = [
                    int(r[0])
                    for r in run(
                        "SELECT through_seq FROM summaries WHERE thread_pk = ?"
                        " ORDER BY through_seq DESC LIMIT ? OFFSET ?",
                        (pk, _SUMMARY_PAGE, offset),
                    )
                ]
                _, off = br.off_path(run, pk, links, seqs)
                found = next((s for s in seqs if s not in off), None)
                if found is not None:
                    row = run(
                        "SELECT through_seq, text, tokens, created_at, model FROM summaries"
                        " WHERE thread_pk = ? AND through_seq = ?",
                        (pk, found),
                    )[0]
                    return Summary(*row)
                if len(seqs) < _SUMMARY_PAGE:
                    return None
                offset += _SUMMARY_PAGE

    def summaries(self, owner: str, thread_id: str) -> list[Summary]:
        return self._summaries(owner, thread_id, "ASC")

    def find_collection(self, owner: str, name: str) -> CollectionInfo | None:
        found = self._collections(owner, name)
        return found[0] if found else None

    def get_collection(self, owner: str, name: str) -> CollectionInfo:
        info = self.find_collection(owner, name)
        if info is None:
            raise UserError(
                f"collection {name!r} not found",
                hint="list them with `chatwright collections list`",
            )
        return info

    def list_collections(self, owner: str) -> list[CollectionInfo]:
        return self._collections(owner, None)

    def find_user(self, name: str) -> UserInfo | None:
        found = self._users(name)
        return found[0] if found else None

    def list_users(self) -> list[UserInfo]:
        return self._users(None)
