"""Retrievers of other libraries as collection sources: ``bot.add_source(name, retriever)``.

A source is searched like a collection: routing sees its description (as it sees a
collection's), a turn's retrieve stage asks it for passages, and they are numbered and cited
with the stored collections' passages, fused by rank. Accepted, by what they can do (no import
of their library here):

- a LangChain retriever (``BaseRetriever``, or any runnable): ``ainvoke(query)`` /
  ``invoke(query)`` -> ``list[Document]`` (``page_content`` + ``metadata``);
- a LlamaIndex retriever: ``aretrieve(query)`` / ``retrieve(query)`` ->
  ``list[NodeWithScore]`` (``node.get_content()``, ``node.metadata``, ``score``);
- any callable ``query -> list[str | dict]`` (sync or async); a dict has ``text`` (or
  ``page_content`` / ``content``) and optionally ``source``, ``title``, ``page``, ``score``,
  ``id`` and ``metadata``.

A passage cites its document's ``source`` (else ``url`` / ``file_path`` / ``file_name`` from its
metadata, else the source's name), ``title`` and ``page``. A source that fails or times out
costs the turn that source's passages only: the trace says why.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chatwright.errors import ConfigError
from chatwright.memory.tokens import TokenCounter
from chatwright.retrieval.index import Hit, Nearest, SearchIndex
from chatwright.retrieval.rag import Retrieved, passages_from, retrieve, unique_hits
from chatwright.search.fusion import reciprocal_rank_fusion

__all__ = ["ExternalSource", "as_source", "retrieve_with_sources"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # as a collection's (for @mentions)
_TEXT_KEYS = ("text", "page_content", "content")
_SOURCE_KEYS = ("source", "url", "file_path", "file_name")
DEFAULT_TIMEOUT_S = 10.0
MAX_CHARS = 4000  # of one passage (a collection's chunks are ~300 tokens)


@dataclass(frozen=True)
class ExternalSource:
    """A retriever from another library, searched like a collection.

    ``owner``: whose turns may search it (None: every user of the bot, as the bot's tools
    are). ``chunks`` is 0: nothing of it is stored here, so routing knows it by its
    description only.
    """

    name: str
    description: str
    kind: str  # "langchain", "llamaindex" or "callable"
    fetch: Callable[[str], Any]  # query -> list of results, or an awaitable of one
    owner: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    chunks: int = 0

    @property
    def namespace(self) -> str:
        return f"source:{self.name}"

    async def search(self, query: str, k: int) -> list[Hit]:
        """Up to ``k`` hits for ``query``, best first; raises what the retriever raises, or
        :class:`TimeoutError`, or :class:`ValueError` for results it cannot read."""
        async with asyncio.timeout(self.timeout_s):
            found = self.fetch(query)
            if inspect.isawaitable(found):
                found = await found
        if isinstance(found, (str, bytes)) or not isinstance(found, Sequence):
            raise ValueError(f"it returned {type(found).__name__}, not a list of results")
        return [self._hit(item, rank) for rank, item in enumerate(found[:k], start=1)]

    def _hit(self, item: Any, rank: int) -> Hit:
        text, metadata, key, score = _read(item)
        if not text.strip():
            raise ValueError(f"result {rank} has no text")
        meta = {k: v for k, v in metadata.items() if isinstance(k, str)}
        source = next((meta[k] for k in _SOURCE_KEYS if meta.get(k)), None)
        meta["source"] = str(source) if source is not None else self.name
        meta["collection"] = self.name
        if meta.get("title") is not None:
            meta["title"] = str(meta["title"])
        page = meta.get("page")
        if page is not None and (not isinstance(page, int) or isinstance(page, bool)):
            meta.pop("page")
        if len(text) > MAX_CHARS:  # a whole document as one result: its start, like a chunk
            text = text[:MAX_CHARS].rsplit(" ", 1)[0] + " …"
        key = f"{self.namespace}:{key if key is not None else rank}"
        return Hit(key, self.namespace, text, meta, score if score is not None else 1.0 / rank)


def _read(item: Any) -> tuple[str, Mapping[str, Any], Any, float | None]:
    """(text, metadata, id, score) of one result of any accepted kind."""
    if isinstance(item, str):
        return item, {}, None, None
    if isinstance(item, Mapping):
        text = next((item[k] for k in _TEXT_KEYS if isinstance(item.get(k), str)), None)
        if text is None:
            raise ValueError(f"a result dict needs one of {', '.join(_TEXT_KEYS)}")
        meta = dict(item.get("metadata") or {})
        meta.update({k: item[k] for k in ("source", "title", "page", "url") if k in item})
        return text, meta, item.get("id"), _score(item.get("score"))
    node = getattr(item, "node", None)
    if node is not None:  # LlamaIndex NodeWithScore
        content = node.get_content() if hasattr(node, "get_content") else node.text
        node_id = getattr(node, "node_id", None) or getattr(node, "id_", None)
        meta = getattr(node, "metadata", None) or {}
        return str(content), meta, node_id, _score(getattr(item, "score", None))
    if hasattr(item, "page_content"):  # LangChain Document
        meta = getattr(item, "metadata", None) or {}
        return str(item.page_content), meta, getattr(item, "id", None), None
    raise ValueError(f"cannot read a {type(item).__name__} as a passage")


def _score(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def as_source(
    name: str,
    retriever: Any,
    *,
    description: str = "",
    owner: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> ExternalSource:
    """An :class:`ExternalSource` over ``retriever`` (see the module's docstring)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"invalid source name {name!r}",
            hint="use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit "
            "(as a collection's name: @name picks it in a message)",
        )
    if timeout_s <= 0:
        raise ConfigError(f"timeout_s must be > 0, not {timeout_s}")
    kind, fetch = _fetcher(retriever)
    return ExternalSource(name, description or "", kind, fetch, owner, timeout_s)


def _fetcher(retriever: Any) -> tuple[str, Callable[[str], Any]]:
    core = sys.modules.get("langchain_core.retrievers")
    if (core is not None and isinstance(retriever, core.BaseRetriever)) or hasattr(
        retriever, "ainvoke"
    ):
        return "langchain", retriever.ainvoke
    if hasattr(retriever, "invoke") and not hasattr(retriever, "retrieve"):
        return "langchain", _in_thread(retriever.invoke)
    if hasattr(retriever, "aretrieve"):
        return "llamaindex", retriever.aretrieve
    if hasattr(retriever, "retrieve"):
        return "llamaindex", _in_thread(retriever.retrieve)
    if callable(retriever):
        if inspect.iscoroutinefunction(retriever):
            return "callable", retriever
        return "callable", _in_thread(retriever)
    raise ConfigError(
        f"{type(retriever).__name__} is not a retriever",
        hint="pass a LangChain retriever (.invoke), a LlamaIndex retriever (.retrieve), or a "
        "function query -> list of str or dict",
    )


def _in_thread(function: Callable[[str], Any]) -> Callable[[str], Any]:
    async def run(query: str) -> Any:
        return await asyncio.to_thread(function, query)

    return run


async def retrieve_with_sources(
    index: SearchIndex | None,
    query: str,
    chosen: Sequence[Any],
    k: int,
    counter: TokenCounter,
    *,
    query_vector: Any = None,
    nearest: Nearest | None = None,
) -> tuple[list[Retrieved], dict[str, str], list[str]]:
    """The ``k`` best passages for ``query`` from ``chosen`` (stored collections and
    :class:`ExternalSource` objects): ``(passages, each source's outcome, notes)``.

    The collections are searched as :func:`chatwright.retrieval.rag.retrieve` does (a
    failure there raises); the sources are asked at the same time, each under its timeout,
    and a failing one only leaves a note. The rankings are fused by reciprocal rank.
    """
    sources = [c for c in chosen if isinstance(c, ExternalSource)]
    namespaces = [c.namespace for c in chosen if not isinstance(c, ExternalSource)]
    if not sources:  # collections only: exactly as before sources existed
        if index is None:
            return [], {}, []
        found = retrieve(
            index, query, namespaces, k, counter, query_vector=query_vector, nearest=nearest
        )
        return found, {}, []
    if not query.strip():
        return [], {}, []
    asked = [asyncio.ensure_future(s.search(query, k)) for s in sources]
    rankings: dict[str, list[Hit]] = {}
    try:
        if namespaces and index is not None:  # in a thread, while the sources are asked
            rankings["collections"] = await asyncio.to_thread(
                index.search,
                query,
                namespaces,
                k=2 * k,
                mode="hybrid",
                query_vector=query_vector,
                nearest=nearest,
            )
        results = await asyncio.gather(*asked, return_exceptions=True)
    finally:
        for task in asked:
            task.cancel()
    report: dict[str, str] = {}
    notes: list[str] = []
    for source, result in zip(sources, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result  # cancelled, interrupted: not the source's failure
            why = (
                f"timed out after {source.timeout_s:g} s"
                if isinstance(result, TimeoutError)
                else f"{type(result).__name__}: {result}"
            )
            report[source.name] = f"failed: {why}"
            notes.append(f"source {source.name!r} failed ({why}); answered without it")
            continue
        report[source.name] = f"{len(result)} passage{'' if len(result) == 1 else 's'}"
        rankings[source.namespace] = result
    by_key = {(h.namespace, h.key): h for ranking in rankings.values() for h in ranking}
    fused = reciprocal_rank_fusion(
        {name: [(h.namespace, h.key) for h in ranking] for name, ranking in rankings.items()}
    )
    hits = []
    for f in fused:
        hit = by_key[f.item]
        hits.append(Hit(hit.key, hit.namespace, hit.text, hit.metadata, f.score, f.ranks))
    return passages_from(unique_hits(hits)[:k], counter), report, notes
