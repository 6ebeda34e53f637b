"""The idempotent ingest: files → sections → chunks → vectors → one transaction per document.

For each file found (``files.py``), in order:

1. **Hash** its bytes (SHA-256). Same hash and same settings (chunk size, overlap, counter,
   embedder, the loaders' ``PARSER_VERSION``) as the stored document: *unchanged*, done,
   nothing parsed.
2. **Parse** (``loaders.py``) and **chunk** (``chunking.py``). A file that cannot be read is
   a :class:`Skipped` with its reason; its previous version, if any, stays in the index.
3. **Embed** only chunk texts not seen before. A chunk's key is
   ``"<document id>:<sha1 of its text, 16 hex>"`` (``.2``, ``.3``… for a repeated text), so
   the vectors of the document's unchanged chunks are read back and reused, and texts
   repeated across files in one run are embedded once. Texts are embedded in batches across
   documents, sized by characters (``embed_chars``, a proxy for tokens: long chunks make
   small batches, short ones large) and capped at ``embed_batch`` texts, outside any
   transaction: a slow embedder never holds the database's write lock.
4. **Write** the document's record, its chunks, and the removal of its chunks that are gone,
   in ONE ``store.transaction()``: a failure (or a crash) leaves the previous version whole.

With an embedder, steps 1-2 (reading, hashing, parsing, chunking: CPU-bound Python) run in a
worker thread ahead of steps 3-4, through a queue of at most ``_AHEAD`` documents, so parsing
the next files overlaps embedding (the ONNX and numpy embedders release the GIL) while memory
stays bounded; the store is only touched by the calling thread.

With ``sync=True``, documents of the collection that the given directories or globs cover
(see :class:`~chatwright.ingest.files.Scope`) but whose file is gone are removed with their
chunks, each in one transaction. Embedding or storage errors stop the run (what was committed
stays, and a re-run resumes by hash); unreadable files never do.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from chatwright.errors import UserError
from chatwright.ingest.chunking import (
    DEFAULT_CHUNK_TOKENS,
    DEFAULT_OVERLAP,
    TextChunk,
    check_sizes,
    chunk_sections,
)
from chatwright.ingest.files import Found, SourceFile, find_files
from chatwright.ingest.loaders import (
    DEFAULT_MAX_BYTES,
    PARSER_VERSION,
    LoadedDocument,
    Skipped,
    UnreadableFile,
    parse,
    read_limited,
)
from chatwright.memory.tokens import ESTIMATE, TokenCounter
from chatwright.retrieval.index import Chunk, SearchIndex

if TYPE_CHECKING:
    from chatwright.store.base import CollectionInfo, DocumentInfo, Store

__all__ = ["IngestReport", "IngestRun", "Ingestor", "Progress"]

Status = Literal["added", "updated", "unchanged", "skipped", "removed"]
# Texts per embed() call: the local embedder sorts each call's texts by length to pad little,
# so larger calls go faster (measured with the numpy encoder on 2 cores: 34 texts/s in calls of
# 640, 24 in calls of 64).
EMBED_BATCH = 256
# Characters per embed() call (about 4 per token): 256 chunks of the default 300 tokens.
# Bounds the embedder's activations whatever the chunk size; short chunks batch up to
# EMBED_BATCH.
EMBED_CHARS = 256 * 1_200
_GROUP_TEXTS = EMBED_BATCH  # chunks gathered across documents before embedding them
_AHEAD = 8  # parsed documents the worker may hold ahead of embedding and writing
_GROUP_DOCS = 32
_CACHE_VECTORS = 20_000  # vectors kept by text hash within a run


@dataclass(frozen=True, slots=True)
class Progress:
    """Sent after each file: what became of it, and the totals so far."""

    path: str
    status: Status
    done: int  # files handled so far (``removed`` events do not count)
    total: int  # files found
    chunks: int  # chunks written so far


@dataclass(slots=True)
class IngestReport:
    collection: str
    files: int = 0  # files found
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    ignored: int = 0  # hidden files and unsupported types found in directories
    chunks_added: int = 0  # chunks with new text (embedded, with an embedder)
    chunks_reused: int = 0  # chunks whose text was already stored: their vectors reused
    chunks_removed: int = 0
    embedded: int = 0  # texts sent to the embedder
    bytes: int = 0  # bytes read
    seconds: float = 0.0

    @property
    def read(self) -> int:
        """Files ingested or found unchanged."""
        return self.added + self.updated + self.unchanged

    @property
    def chunks_written(self) -> int:
        return self.chunks_added + self.chunks_reused


@dataclass(slots=True)
class _Prepared:
    """A parsed, chunked document waiting for its vectors and its transaction."""

    file: SourceFile
    digest: str
    size: int
    doc: LoadedDocument
    chunks: list[TextChunk]
    hashes: list[str]
    old: DocumentInfo | None
    old_vectors: dict[str, np.ndarray | None]  # text hash -> stored vector, of the old version
    extra: dict[str, Any] = field(default_factory=dict)  # more document metadata (web: etag)


def text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def chunk_keys(document_id: int, hashes: Sequence[str]) -> list[str]:
    """Keys unique within the document: a repeated text gets ``.2``, ``.3``…"""
    seen: dict[str, int] = {}
    keys = []
    for h in hashes:
        seen[h] = seen.get(h, 0) + 1
        keys.append(f"{document_id}:{h}" if seen[h] == 1 else f"{document_id}:{h}.{seen[h]}")
    return keys


def _hash_of_key(key: str) -> str:
    return key.partition(":")[2].partition(".")[0]


class Ingestor:
    """Ingests files into one owner's collections; see the module's docstring.

    ``index`` must search ``store``'s chunks (``SearchIndex.for_store(store, embedder)``);
    its embedder (None: keyword search only) embeds the chunks. ``counter`` sizes chunks
    (default: the estimate).
    """

    def __init__(
        self,
        store: Store,
        index: SearchIndex,
        owner: str,
        *,
        counter: TokenCounter | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        overlap: int = DEFAULT_OVERLAP,
        embed_batch: int = EMBED_BATCH,
        embed_chars: int = EMBED_CHARS,
    ) -> None:
        check_sizes(chunk_tokens, overlap)
        if max_bytes < 1:
            raise UserError(f"the size limit must be positive, not {max_bytes}")
        self.store = store
        self.index = index
        self.owner = owner
        self.counter = counter or ESTIMATE
        self.max_bytes = max_bytes
        self.chunk_tokens = chunk_tokens
        self.overlap = overlap
        self.embed_batch = max(1, embed_batch)
        self.embed_chars = max(1, embed_chars)
        self.embedder = index.embedder
        self._cache: dict[str, np.ndarray] = {}

    @property
    def settings(self) -> str:
        """What, besides the bytes, decides a document's chunks and vectors."""
        return (
            f"chunks={self.chunk_tokens}/{self.overlap} count={self.counter.name} "
            f"embedder={_name(self.embedder)} parser={PARSER_VERSION}"
        )

    # -- the run ----------------------------------------------------------------------------
    def ingest(
        self,
        paths: Iterable[str | Path],
        collection: str,
        *,
        sync: bool = False,
        description: str = "",
        progress: Callable[[Progress], None] | None = None,
        literal: bool = False,
    ) -> IngestReport:
        """Ingest ``paths`` into ``collection`` (created if missing); see the module's docstring.
        ``literal``: the paths are file names, never glob patterns."""
        start = time.perf_counter()
        found = find_files(paths, literal=literal)
        info = self.store.find_collection(self.owner, collection)
        if info is None:
            info = self.store.create_collection(self.owner, collection, description)
        self._check_dim(info)
        run = IngestRun(self, info, found, progress)
        run.go()
        if sync:
            run.sync()
        run.report.seconds = time.perf_counter() - start
        return run.report

    def _check_dim(self, info: CollectionInfo) -> None:
        dim = vector_dim(self.store, info)
        if self.embedder is not None and dim and dim != self.embedder.dim:
            raise UserError(
                f"collection {info.name!r} holds {dim}-dimensional vectors, but the "
                f"embedder {self.embedder.name} makes {self.embedder.dim}-dimensional ones",
                hint="ingest with the collection's embedder, or into a new collection",
            )

    # -- pieces the run uses ----------------------------------------------------------------
    def prepare(
        self,
        info: CollectionInfo,
        file: SourceFile,
        data: bytes,
        digest: str,
        old: DocumentInfo | None,
        doc: LoadedDocument | None = None,
    ) -> _Prepared:
        """Parse (unless ``doc`` is given: a web page, parsed already) and chunk one file, and
        read back its old version's vectors."""
        return self.read_back(info, self.parse_file(file, data, digest, old, doc))

    def parse_file(
        self,
        file: SourceFile,
        data: bytes,
        digest: str,
        old: DocumentInfo | None,
        doc: LoadedDocument | None = None,
    ) -> _Prepared:
        """Parse and chunk one file; touches no store (the worker thread calls it)."""
        return self.reader.parse(file, data, digest, old, doc)

    @property
    def reader(self) -> FileReader:
        """What reading, parsing and chunking a file needs, without the store: picklable,
        for another thread or another machine (``ray_engine.py``)."""
        return FileReader(
            self.max_bytes, self.chunk_tokens, self.overlap, self.counter, self.settings
        )

    def read_back(self, info: CollectionInfo, p: _Prepared) -> _Prepared:
        """Fill ``p.old_vectors`` with the stored vectors of its old version."""
        if p.old is not None and p.old.metadata.get("embedder") == _name(self.embedder):
            stored = self.index.chunks.vectors(info.namespace, f"{p.old.id}:")
            p.old_vectors = {_hash_of_key(key): vector for key, vector in stored.items()}
        return p

    def _stored_keys(self, namespace: str, document_id: int) -> set[str]:
        """The keys of the document's chunks (``"<id>:…"``)."""
        return set(self.index.chunks.vectors(namespace, f"{document_id}:"))

    def embed(self, prepared: Sequence[_Prepared]) -> int:
        """Fill the vector cache with every text of ``prepared`` not stored or cached."""
        if self.embedder is None:
            return 0
        if len(self._cache) > _CACHE_VECTORS:
            self._cache.clear()  # before choosing what to embed: what is chosen stays
        todo: dict[str, str] = {}
        for p in prepared:
            for h, chunk in zip(p.hashes, p.chunks, strict=True):
                if h not in self._cache and p.old_vectors.get(h) is None:
                    todo.setdefault(h, chunk.text)
        items = list(todo.items())
        for batch in self.batches(items):
            vectors = np.asarray(self.embedder.embed([text for _, text in batch]), np.float32)
            for (h, _), vector in zip(batch, vectors, strict=True):
                self._cache[h] = vector
        return len(items)

    def batches(self, items: Sequence[tuple[str, str]]) -> Iterable[list[tuple[str, str]]]:
        """``(hash, text)`` pairs in runs of at most ``embed_batch`` texts and ``embed_chars``
        characters (a text longer than that goes alone)."""
        batch: list[tuple[str, str]] = []
        chars = 0
        for item in items:
            if batch and (
                len(batch) >= self.embed_batch or chars + len(item[1]) > self.embed_chars
            ):
                yield batch
                batch, chars = [], 0
            batch.append(item)
            chars += len(item[1])
        if batch:
            yield batch

    def vector(self, p: _Prepared, h: str) -> Any:
        if self.embedder is None:
            return None
        stored = p.old_vectors.get(h)
        return stored if stored is not None else self._cache[h]

    def write(self, info: CollectionInfo, p: _Prepared) -> tuple[int, int, int]:
        """Store one document and its chunks atomically; (added, reused, removed) chunks."""
        metadata: dict[str, Any] = {
            "format": p.doc.format,
            "settings": self.settings,
            "embedder": _name(self.embedder),
        }
        if p.doc.pages is not None:
            metadata["pages"] = p.doc.pages
        metadata.update(p.extra)
        with self.store.transaction():
            doc = self.store.put_document(
                self.owner,
                info.name,
                p.file.source,
                title=p.doc.title,
                content_hash=p.digest,
                size=p.size,
                chunks=len(p.chunks),
                metadata=metadata,
            )
            keys = chunk_keys(doc.id, p.hashes)
            before = self._stored_keys(info.namespace, doc.id)
            self.index.add(
                info.namespace,
                [
                    Chunk(key, c.text, self._metadata(doc.id, p, c), self.vector(p, h))
                    for key, h, c in zip(keys, p.hashes, p.chunks, strict=True)
                ],
            )
            gone = before - set(keys)
            if gone:
                self.index.remove(info.namespace, gone)
        reused = sum(1 for key in keys if key in before)
        return len(keys) - reused, reused, len(gone)

    @staticmethod
    def _metadata(document_id: int, p: _Prepared, c: TextChunk) -> dict[str, Any]:
        return {
            "document_id": document_id,
            "source": p.file.source,
            "title": p.doc.title,
            "heading_path": " > ".join(c.heading_path),  # as before; "headings" is exact
            "headings": list(c.heading_path),
            "page": c.page,
            "chunk_index": c.index,
        }

    def remove(self, info: CollectionInfo, doc: DocumentInfo) -> int:
        """Remove a document and its chunks in one transaction; how many chunks went."""
        with self.store.transaction():
            keys = self._stored_keys(info.namespace, doc.id)
            removed = self.index.remove(info.namespace, keys) if keys else 0
            self.store.delete_document(self.owner, info.name, doc.source)
        return removed


def vector_dim(store: Store, info: CollectionInfo) -> int:
    """The length of the collection's stored vectors (0: it has none)."""
    return store.chunks.dimension(info.namespace)


def has_vectors(store: Store, info: CollectionInfo) -> bool:
    return vector_dim(store, info) > 0


def _name(embedder: Any) -> str:
    return embedder.name if embedder is not None else "none"


@dataclass(frozen=True, slots=True)
class FileReader:
    """Reads, hashes, parses and chunks files with an :class:`Ingestor`'s settings; holds no
    store, so it runs in the reader thread or, pickled, on a Ray worker."""

    max_bytes: int
    chunk_tokens: int
    overlap: int
    counter: TokenCounter
    settings: str  # Ingestor.settings: an unchanged file has the same hash and settings

    def read(self, file: SourceFile, old: DocumentInfo | None) -> _Read:
        """One file: unchanged (same hash and settings as ``old``), skipped, or parsed."""
        try:
            data = read_limited(file.real, self.max_bytes)
        except UnreadableFile as e:
            return _Read(file, 0, skipped=e.message)
        digest = hashlib.sha256(data).hexdigest()
        if (
            old is not None
            and old.content_hash == digest
            and old.metadata.get("settings") == self.settings
        ):
            return _Read(file, len(data))
        try:
            prepared = self.parse(file, data, digest, old)
        except UnreadableFile as e:
            return _Read(file, len(data), skipped=e.message)
        except RecursionError:
            return _Read(file, len(data), skipped="too deeply nested to parse")
        return _Read(file, len(data), prepared=prepared)

    def parse(
        self,
        file: SourceFile,
        data: bytes,
        digest: str,
        old: DocumentInfo | None,
        doc: LoadedDocument | None = None,
    ) -> _Prepared:
        doc = doc if doc is not None else parse(file.path.name, data)
        chunks = chunk_sections(
            doc.sections,
            max_tokens=self.chunk_tokens,
            overlap=self.overlap,
            count=self.counter.count,
        )
        return _Prepared(
            file=file,
            digest=digest,
            size=len(data),
            doc=doc,
            chunks=chunks,
            hashes=[text_hash(c.text) for c in chunks],
            old=old,
            old_vectors={},
        )


class IngestRun:
    """One call of :meth:`Ingestor.ingest`: its state and report."""

    def __init__(
        self,
        ingestor: Ingestor,
        info: CollectionInfo,
        found: Found,
        progress: Callable[[Progress], None] | None,
    ) -> None:
        self.ing = ingestor
        self.info = info
        self.found = found
        self.progress = progress
        self.report = IngestReport(
            info.name, files=len(found.files), skipped=list(found.skipped), ignored=found.ignored
        )
        self.existing = {
            d.source: d for d in ingestor.store.list_documents(ingestor.owner, info.name)
        }
        self.group: list[_Prepared] = []
        self.done = 0
        self.reader = ingestor.reader

    def tell(self, path: Path | str, status: Status) -> None:
        if status != "removed":
            self.done += 1
        if self.progress is not None:
            self.progress(
                Progress(
                    str(path), status, self.done, self.report.files, self.report.chunks_written
                )
            )

    def go(self) -> None:
        """Parse in a worker thread (:class:`_Reader`) while this one embeds and writes.
        Without an embedder, here: nothing would release the GIL to overlap with (measured:
        the thread cost 10-15% of keyword-only Markdown ingest)."""
        reader = _Reader(self) if self.ing.embedder is not None else None
        try:
            for item in reader if reader is not None else map(self.read, self.found.files):
                self.take(item)
                if self.full():
                    self.flush()
            self.flush()
        finally:
            if reader is not None:
                reader.stop()

    def take(self, item: _Read) -> None:
        """Account for one file the reader handled: unchanged, skipped or parsed."""
        self.report.bytes += item.size
        if item.skipped is not None:
            self.skip(item.file, item.skipped)
        elif item.prepared is None:
            self.report.unchanged += 1
            self.tell(item.file.path, "unchanged")
        else:
            self.group.append(self.ing.read_back(self.info, item.prepared))

    def read(self, file: SourceFile) -> _Read:
        """Read, hash, parse and chunk one file; touches no store (the reader's thread)."""
        return self.reader.read(file, self.existing.get(file.source))

    def skip(self, file: SourceFile, reason: str) -> None:
        self.report.skipped.append(Skipped(str(file.path), reason))
        self.tell(file.path, "skipped")

    def flush(self) -> None:
        if not self.group:
            return
        self.report.embedded += self.embed_group()
        for p in self.group:
            added, reused, removed = self.ing.write(self.info, p)
            self.report.chunks_added += added
            self.report.chunks_reused += reused
            self.report.chunks_removed += removed
            if p.old is None:
                self.report.added += 1
            else:
                self.report.updated += 1
            self.tell(p.file.path, "added" if p.old is None else "updated")
        self.group = []

    def embed_group(self) -> int:
        """Make the vectors of ``self.group``'s new texts; how many texts were embedded."""
        return self.ing.embed(self.group)

    def full(self) -> bool:
        """Whether the group is large enough to embed and write."""
        return (
            len(self.group) >= _GROUP_DOCS or sum(len(p.chunks) for p in self.group) >= _GROUP_TEXTS
        )

    def sync(self) -> None:
        seen = {f.source for f in self.found.files}
        for source, doc in sorted(self.existing.items()):
            if source in seen or not self.found.covered(source):
                continue
            self.report.chunks_removed += self.ing.remove(self.info, doc)
            self.report.removed += 1
            self.tell(source, "removed")


@dataclass(slots=True)
class _Read:
    """What the reader made of one file: parsed (``prepared``), unchanged, or ``skipped``."""

    file: SourceFile
    size: int  # bytes read
    prepared: _Prepared | None = None
    skipped: str | None = None  # the reason


_DONE = object()


class _Reader:
    """Runs :meth:`IngestRun.read` over the run's files in a worker thread, at most ``_AHEAD``
    files ahead of the consumer; iterate it for the results, in order. An error in the worker
    is raised in the consumer; :meth:`stop` ends the worker early (the consumer failed)."""

    def __init__(self, run: IngestRun) -> None:
        self.run = run
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=_AHEAD)
        self.stopped = threading.Event()
        self.thread = threading.Thread(
            target=self.work, name="chatwright-ingest-reader", daemon=True
        )
        self.thread.start()

    def work(self) -> None:
        try:
            for file in self.run.found.files:
                if not self.put(self.run.read(file)):
                    return
            self.put(_DONE)
        except BaseException as e:  # handed to the consumer, raised there
            self.put(e)

    def put(self, item: Any) -> bool:
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[_Read]:
        while True:
            item = self.queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self) -> None:
        """End the worker: at once when it waits on the queue, else after the file it is
        parsing (not waited for: it touches no store)."""
        self.stopped.set()
        self.thread.join(timeout=1.0)
