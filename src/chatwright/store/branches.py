"""Branches of a thread, the same for every backend: the tables, and the queries that read
the active branch's path without scanning the thread.

A regenerated answer or an edited message does not overwrite anything: it starts a branch, an
alternative continuation after some message. Every message records the branch it was written
on (0: main); seqs keep growing across all branches, so a path in seq order is a
conversation in the order it was said. A ``branches`` row records the branch's parent and the
seq it forks after (``fork_seq``, a message of the parent, or 0: before the first message); a
thread records its active branch, the one turns read and append to.

The path of branch *b* is *b*'s own messages, after its parent's path up to ``fork_seq``, and
so on up to main: a chain of (branch, last seq) pairs, one per ancestor. The newest K messages
of a path are read chain link by chain link with the ``(thread, branch, seq)`` index, newest
first, stopping at K: the cost follows K and the depth of the chain, not the thread's length.

A thread holds at most :data:`MAX_BRANCHES` branches, nested at most :data:`MAX_BRANCH_DEPTH`
deep (a branch of a branch of …): ``fork`` refuses one more with :class:`TooManyBranches`
(HTTP 409), and an import that would pass either is refused whole. Past them a read of the
thread would grow with the number of versions (the path's query has a term per ancestor, the
"versions" of the messages shown look at every branch).

The queries are written once with ``?`` placeholders; a backend passes a ``run(sql, params)``
that executes one statement and returns its rows (PostgreSQL's turns ``?`` into ``%s``).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from chatwright.errors import ThreadNotFound, UserError
from chatwright.store.base import BranchInfo

__all__ = [
    "BRANCH_TABLES",
    "BRANCH_TABLES_PG",
    "BY_BRANCH",
    "MAX_BRANCHES",
    "MAX_BRANCH_DEPTH",
    "MESSAGE_COLUMNS",
    "Run",
    "TooManyBranches",
    "alternatives",
]

MAX_BRANCHES = 500  # branches a thread may hold, main not counted
MAX_BRANCH_DEPTH = 200  # forks from main to a branch: a branch of a branch of … this deep


class TooManyBranches(UserError):
    """A fork past :data:`MAX_BRANCHES` or :data:`MAX_BRANCH_DEPTH`: the thread has too many
    versions (regenerations, edits) to take another."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"the thread has too many versions to make another ({what})",
            hint="export it (GET /api/threads/{id}/export) and start a new thread to go on,"
            " or continue the branch you are on without regenerating or editing",
        )


Run = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
Chain = list[tuple[int, int | None]]  # (branch, its last seq on the path; None: no bound)

MESSAGE_COLUMNS = "seq, created_at, role, text, data, tokens, branch"
# The messages table read through the (thread, branch, seq) index. Told to SQLite: without
# statistics its planner may walk the primary key backwards instead, filtering on the branch,
# which reads the whole thread when a branch has fewer messages than asked for. PostgreSQL
# plans by its statistics (its runner drops the hint).
BY_BRANCH = "messages INDEXED BY messages_by_branch"

BRANCH_TABLES: tuple[str, ...] = (
    "ALTER TABLE messages ADD COLUMN branch INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE threads ADD COLUMN branch INTEGER NOT NULL DEFAULT 0",
    """
    CREATE TABLE branches (
        thread_pk  INTEGER NOT NULL REFERENCES threads (pk) ON DELETE CASCADE,
        id         INTEGER NOT NULL,
        parent     INTEGER NOT NULL,
        fork_seq   INTEGER NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (thread_pk, id)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX messages_by_branch ON messages (thread_pk, branch, seq)",
)

BRANCH_TABLES_PG: tuple[str, ...] = (
    "ALTER TABLE messages ADD COLUMN branch integer NOT NULL DEFAULT 0",
    "ALTER TABLE threads ADD COLUMN branch integer NOT NULL DEFAULT 0",
    """
    CREATE TABLE branches (
        thread_pk  bigint NOT NULL REFERENCES threads (pk) ON DELETE CASCADE,
        id         integer NOT NULL,
        parent     integer NOT NULL,
        fork_seq   integer NOT NULL,
        created_at double precision NOT NULL,
        PRIMARY KEY (thread_pk, id)
    )
    """,
    "CREATE INDEX messages_by_branch ON messages (thread_pk, branch, seq)",
)


def thread_row(run: Run, owner: str, thread_id: str, lock: str = "") -> tuple[int, int, int]:
    """(pk, last seq, active branch) of the thread, or ThreadNotFound (``lock``: a suffix
    such as `` FOR UPDATE``)."""
    rows = run(
        "SELECT pk, last_seq, branch FROM threads WHERE owner = ? AND id = ?" + lock,
        (owner, thread_id),
    )
    if not rows:
        raise ThreadNotFound(thread_id)
    pk, last, branch = rows[0]
    return int(pk), int(last), int(branch)


def chain(run: Run, pk: int, branch: int) -> Chain:
    """The path of ``branch`` as (branch, last seq) links, from it up to main."""
    links: Chain = [(branch, None)]
    if branch == 0:
        return links
    rows = run(  # one query, however deep: the branch, its parent, its parent's parent…
        "WITH RECURSIVE up (id, parent, fork_seq, depth) AS ("
        " SELECT id, parent, fork_seq, 0 FROM branches WHERE thread_pk = ? AND id = ?"
        " UNION ALL SELECT b.id, b.parent, b.fork_seq, up.depth + 1"
        " FROM branches b JOIN up ON b.thread_pk = ? AND b.id = up.parent)"
        " SELECT parent, fork_seq FROM up ORDER BY depth",
        (pk, branch, pk),
    )
    links += [(int(parent), int(bound)) for parent, bound in rows]
    return links


def _path_clause(links: Chain) -> tuple[str, list[Any]]:
    """A WHERE clause (and its parameters) that keeps the messages of the path. The terms are
    OR-ed as a balanced tree: a chain of N links nests log2(N) deep, not N (SQLite refuses an
    expression tree past 1,000 levels, and a thread stored before the depth limit may hold
    such a chain)."""
    parts, params = [], []
    for branch, bound in links:
        if bound is None:
            parts.append("branch = ?")
            params.append(branch)
        else:
            parts.append("(branch = ? AND seq <= ?)")
            params += [branch, bound]
    while len(parts) > 1:
        parts = [
            f"({' OR '.join(parts[i : i + 2])})" if i + 1 < len(parts) else parts[i]
            for i in range(0, len(parts), 2)
        ]
    return "(" + parts[0] + ")", params


def recent_rows(
    run: Run, pk: int, links: Chain, limit: int, before_seq: int | None = None
) -> list[tuple[Any, ...]]:
    """The newest ``limit`` message rows of the path (before ``before_seq``), oldest first:
    one index range per chain link, newest first, until ``limit`` are found."""
    rows: list[tuple[Any, ...]] = []
    top = None if before_seq is None else before_seq - 1
    for branch, bound in links:
        if len(rows) >= limit:
            break
        if bound is not None:
            top = bound if top is None else min(top, bound)
        sql = f"SELECT {MESSAGE_COLUMNS} FROM {BY_BRANCH} WHERE thread_pk = ? AND branch = ?"
        params: list[Any] = [pk, branch]
        if top is not None:
            sql += " AND seq <= ?"
            params.append(top)
        rows += run(sql + " ORDER BY seq DESC LIMIT ?", (*params, limit - len(rows)))
    return rows[::-1]


def path_rows(
    run: Run, pk: int, links: Chain | None, after_seq: int, batch: int
) -> list[tuple[Any, ...]]:
    """The next ``batch`` message rows after ``after_seq`` on the path (``links``), or of
    every branch (``links`` None), oldest first."""
    sql = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE thread_pk = ? AND seq > ?"
    params: list[Any] = [pk, after_seq]
    if links is not None:
        clause, more = _path_clause(links)
        sql += " AND " + clause
        params += more
    return run(sql + " ORDER BY seq LIMIT ?", (*params, batch))


def on_path(run: Run, pk: int, links: Chain, seqs: Sequence[int]) -> set[int]:
    """Which of ``seqs`` are messages on the path."""
    return off_path(run, pk, links, seqs)[0]


def off_path(run: Run, pk: int, links: Chain, seqs: Sequence[int]) -> tuple[set[int], set[int]]:
    """(those of ``seqs`` that are messages on the path, those that are messages off it)."""
    wanted = sorted({int(s) for s in seqs})
    if not wanted:
        return set(), set()
    marks = ", ".join("?" for _ in wanted)
    rows = run(
        f"SELECT seq, branch FROM messages WHERE thread_pk = ? AND seq IN ({marks})",
        (pk, *wanted),
    )
    bounds = dict(links)
    on, off = set(), set()
    for seq, branch in rows:
        bound = bounds.get(branch, -1)
        (on if branch in bounds and (bound is None or seq <= bound) else off).add(int(seq))
    return on, off


def list_branches(run: Run, pk: int, created_at: float, *, counts: bool = True) -> list[BranchInfo]:
    """Main, then every branch of the thread by id, with its first and last own messages
    (each one index lookup) and, with ``counts``, how many it holds (linear in the branch:
    without, ``messages`` is 0; a page of messages needs no counts)."""
    own = "(SELECT {f}(seq) FROM messages m WHERE m.thread_pk = ? AND m.branch = {b})"
    count = own.format(f="COUNT", b="{b}") if counts else "0"
    main = run(
        "SELECT "
        + ", ".join((own.format(f="MIN", b="0"), own.format(f="MAX", b="0"), count.format(b="0"))),
        (pk,) * (3 if counts else 2),
    )[0]
    out = [BranchInfo(0, None, 0, created_at, main[0], main[1], int(main[2] or 0))]
    rows = run(
        "SELECT b.id, b.parent, b.fork_seq, b.created_at, "
        + own.format(f="MIN", b="b.id")
        + ", "
        + own.format(f="MAX", b="b.id")
        + ", "
        + count.format(b="b.id")
        + ", (SELECT MIN(seq) FROM messages m WHERE m.thread_pk = ? AND m.branch = b.parent"
        " AND m.seq > b.fork_seq)"
        " FROM branches b WHERE b.thread_pk = ? ORDER BY b.id",
        (pk,) * (5 if counts else 4),
    )
    out += [
        BranchInfo(int(i), int(p), int(f), float(at), first, last, int(n or 0), replaces)
        for i, p, f, at, first, last, n, replaces in rows
    ]
    return out


def fork(run: Run, pk: int, after_seq: int, now: float) -> BranchInfo:
    """Insert a branch continuing after message ``after_seq`` and make it active."""
    parent = 0
    if after_seq != 0:
        rows = run("SELECT branch FROM messages WHERE thread_pk = ? AND seq = ?", (pk, after_seq))
        if not rows:
            raise UserError(
                f"the thread has no message {after_seq} to branch from",
                hint="list its messages (GET /threads/{id}/messages) and use one of their seqs",
            )
        parent = int(rows[0][0])
    count = int(run("SELECT COUNT(*) FROM branches WHERE thread_pk = ?", (pk,))[0][0])
    if count >= MAX_BRANCHES:
        raise TooManyBranches(f"it holds {count:,} branches, the most a thread may hold")
    depth = len(chain(run, pk, parent))  # the new branch's: its parent's links, main's included
    if depth > MAX_BRANCH_DEPTH:
        raise TooManyBranches(f"a branch nested {depth} deep, over the limit of {MAX_BRANCH_DEPTH}")
    new = int(run("SELECT COALESCE(MAX(id), 0) + 1 FROM branches WHERE thread_pk = ?", (pk,))[0][0])
    run(
        "INSERT INTO branches (thread_pk, id, parent, fork_seq, created_at) VALUES (?, ?, ?, ?, ?)",
        (pk, new, parent, after_seq, now),
    )
    run("UPDATE threads SET branch = ?, updated_at = ? WHERE pk = ?", (new, now, pk))
    return BranchInfo(new, parent, after_seq, now)


def switch(run: Run, pk: int, branch: int) -> None:
    """Make ``branch`` the thread's active one, or a UserError naming the branches there are."""
    if branch != 0 and not run(
        "SELECT 1 FROM branches WHERE thread_pk = ? AND id = ?", (pk, branch)
    ):
        count = int(run("SELECT COUNT(*) FROM branches WHERE thread_pk = ?", (pk,))[0][0])
        raise UserError(
            f"branch {branch} not found",
            hint=f"its branches are 0 (main) to {count}" if count else "it has only main (0)",
        )
    run("UPDATE threads SET branch = ? WHERE pk = ?", (branch, pk))


def alternatives(
    branches: Sequence[BranchInfo], shown: Iterable[int] | None = None
) -> dict[int, list[tuple[int, int]]]:
    """For each message that has alternatives (other messages after the same predecessor:
    regenerated answers, edited messages), all of them as (seq, the branch to switch to for
    it), oldest first. A page shows the message's place in its list as "< 2/3 >". With
    ``shown`` (the seqs on a page), only the lists those seqs are in are worked out.

    The branch to switch to for a version is, of the branches whose path holds it, the one
    written to last: going back to a version shows it as it was left (with a later answer
    regenerated below it, say), not always its first continuation."""
    points: dict[tuple[int, int], list[int]] = {}
    replaced: dict[tuple[int, int], int] = {}
    for b in branches:
        if b.parent is None or b.first_seq is None:
            continue
        key = (b.parent, b.fork_seq)
        points.setdefault(key, []).append(b.first_seq)
        if b.replaces is not None:
            replaced[key] = b.replaces
    holding = _paths_holding(branches)
    wanted = None if shown is None else set(shown)
    out: dict[int, list[tuple[int, int]]] = {}
    for key, seqs in points.items():
        if key in replaced:
            seqs.append(replaced[key])
        if len(seqs) < 2 or (wanted is not None and wanted.isdisjoint(seqs)):
            continue
        alts = sorted((seq, holding(seq)) for seq in seqs)
        for seq, _ in alts:
            out[seq] = alts
    return out


def _paths_holding(branches: Sequence[BranchInfo]) -> Callable[[int], int]:
    """``holding(seq)``: the branch written to last among those whose path holds message
    ``seq``: its own branch, or a descendant whose fork off that branch is at or after
    ``seq`` (a branch's own messages come after its fork, so deeper forks are too).

    Linear to set up, a binary search per call: for each branch, the newest-written branch
    of its subtree (children have higher ids than their parents: folded from the highest
    id down), and for each parent its children by fork seq with the best of each suffix."""
    by_id = {b.id: b for b in branches}
    best: dict[int, tuple[int, int]] = {  # branch -> (last seq, branch) newest in its subtree
        b.id: (-1 if b.last_seq is None else b.last_seq, b.id) for b in branches
    }
    children: dict[int, list[BranchInfo]] = {}
    for b in sorted(branches, key=lambda b: -b.id):
        if b.parent is not None and b.parent in by_id and b.parent < b.id:
            best[b.parent] = max(best[b.parent], best[b.id])
            children.setdefault(b.parent, []).append(b)
    forks: dict[int, list[int]] = {}  # parent -> its children's fork seqs, ascending
    suffix: dict[int, list[tuple[int, int]]] = {}  # parent -> best subtree from i on
    for parent, kids in children.items():
        kids.sort(key=lambda b: b.fork_seq)
        forks[parent] = [b.fork_seq for b in kids]
        run, acc = [], (-1, -1)
        for b in reversed(kids):
            acc = max(acc, best[b.id])
            run.append(acc)
        suffix[parent] = run[::-1]
    owner = {}  # seq -> its branch, for the seqs asked about (first messages and replaced)
    for b in branches:
        if b.first_seq is not None:
            owner[b.first_seq] = b.id
        if b.replaces is not None and b.parent is not None:
            owner[b.replaces] = b.parent

    def holding(seq: int) -> int:
        home = owner[seq]
        newest = by_id[home].last_seq or 0
        i = bisect.bisect_left(forks.get(home, []), seq)
        if i < len(forks.get(home, [])):
            last, branch = suffix[home][i]
            if last > newest:
                return branch
        return home

    return holding
