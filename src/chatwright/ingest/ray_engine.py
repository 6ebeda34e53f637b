"""``chatwright ingest --engine ray``: reading, parsing, chunking and embedding on a Ray cluster.

The files become a Ray Data pipeline::

    ray.data.from_items(files)                      # one row per file found by the driver
      .map_batches(_read_batch)                     # tasks: read, hash, parse, chunk (FileReader)
      .map_batches(_Embed, compute=ActorPoolStrategy(size=N))  # actors, each holding one embedder
    → the driver, in the files' order               # IngestRun: one transaction per document

Only the driver touches the store: it stays the single writer, with the local engine's
idempotency (content hash + settings: an unchanged file is hashed on a worker and never
parsed), report and per-document transactions; :class:`_RayRun` is an
:class:`~chatwright.ingest.pipeline.IngestRun` whose files come back from the cluster already
parsed and embedded. The embedder is rebuilt on each actor from its name (``provider:model``),
so it must be one :func:`~chatwright.models.embeddings.get_embedder` can load there.

Every worker must see the files at the paths the driver found them (one machine, or a shared
file system). Unlike the local engine, a changed document has all its new version's texts
embedded on the cluster, the unchanged ones too; the stored vectors of those are kept.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chatwright.errors import UserError
from chatwright.ingest.files import find_files
from chatwright.ingest.pipeline import FileReader, Ingestor, IngestReport, IngestRun, Progress

if TYPE_CHECKING:
    from collections.abc import Callable

    from chatwright.config import Settings
    from chatwright.ingest.pipeline import _Read

__all__ = ["RayEngine", "import_ray"]

INSTALL_HINT = 'pip install "chatwright[ray]" (or pip install "ray[data]")'
_READ_BATCH = 8  # files per read task
_EMBED_BATCH = 8  # files per call of an embedding actor


def import_ray() -> Any:
    """The ``ray`` module, or a UserError saying how to install it."""
    try:
        import ray
        import ray.data  # the Data library is an extra of its own
    except ImportError as e:
        raise UserError(
            f"--engine ray needs Ray Data, which is not installed ({e})", hint=INSTALL_HINT
        ) from None
    return ray


@dataclass(slots=True)
class RayEngine:
    """Runs :meth:`ingest` on the Ray cluster at ``address`` (None: the one this process is
    connected to, or else a new local one; ``"auto"``: the running cluster on this machine;
    ``"ray://host:10001"``: a remote one through Ray Client). ``embedders``: embedding actors
    (default: one per 2 CPUs of the cluster). ``settings`` lets an actor load a local model."""

    address: str | None = None
    embedders: int | None = None
    settings: Settings | None = None

    def ingest(
        self,
        ingestor: Ingestor,
        paths: Iterable[str | Path],
        collection: str,
        *,
        sync: bool = False,
        description: str = "",
        progress: Callable[[Progress], None] | None = None,
        literal: bool = False,
    ) -> IngestReport:
        """As :meth:`Ingestor.ingest`, with reading and embedding on the cluster."""
        import time

        ray = import_ray()
        start = time.perf_counter()
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        found = find_files(paths, literal=literal)
        info = ingestor.store.find_collection(ingestor.owner, collection)
        if info is None:
            info = ingestor.store.create_collection(ingestor.owner, collection, description)
        ingestor._check_dim(info)
        run = _RayRun(ingestor, info, found, progress)
        run.results = self._results(ray, ingestor, run)
        run.go()
        if sync:
            run.sync()
        run.report.seconds = time.perf_counter() - start
        return run.report

    def _results(self, ray: Any, ingestor: Ingestor, run: IngestRun) -> Iterator[Any]:
        """Each file's ``(_Read, {text hash: vector})``, in the order of ``run.found.files``."""
        files = run.found.files
        if not files:
            return iter(())
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # documents get the local engine's ids
        items = [{"item": pickle.dumps((f, run.existing.get(f.source)))} for f in files]
        cpus = ray.cluster_resources().get("CPU", 1)
        share = min(1.0, cpus / 2)  # a read task and an actor fit on a cluster of one CPU
        ds = ray.data.from_items(items).map_batches(
            _read_batch,
            fn_kwargs={"reader": ingestor.reader},
            batch_size=_READ_BATCH,
            num_cpus=share,
        )
        if ingestor.embedder is not None:
            actors = self.embedders or max(1, int(cpus // 2))
            ds = ds.map_batches(
                _Embed,
                fn_constructor_kwargs={"name": ingestor.embedder.name, "settings": self.settings},
                batch_size=_EMBED_BATCH,
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=share,
            )
        return (pickle.loads(row["item"]) for row in ds.iter_rows())


def _read_batch(batch: dict[str, Any], reader: FileReader) -> dict[str, Any]:
    """A Ray task: read, hash, parse and chunk a batch of files (no embedding yet)."""
    out = []
    for blob in batch["item"]:
        file, old = pickle.loads(blob)
        out.append(pickle.dumps((reader.read(file, old), {})))
    return {"item": out}


class _Embed:
    """A Ray actor holding one embedder: embeds the texts of each parsed file it is given."""

    def __init__(self, name: str, settings: Settings | None) -> None:
        from chatwright.models.embeddings import get_embedder

        self.embedder = get_embedder(name, settings)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        reads = [pickle.loads(blob)[0] for blob in batch["item"]]
        todo: dict[str, str] = {}
        for read in reads:
            if read.prepared is not None:
                for h, chunk in zip(read.prepared.hashes, read.prepared.chunks, strict=True):
                    todo.setdefault(h, chunk.text)
        vectors: dict[str, np.ndarray] = {}
        if todo:
            made = np.asarray(self.embedder.embed(list(todo.values())), np.float32)
            vectors = dict(zip(todo, made, strict=True))
        out = []
        for read in reads:
            mine = {h: vectors[h] for h in read.prepared.hashes} if read.prepared else {}
            out.append(pickle.dumps((read, mine)))
        return {"item": out}


class _RayRun(IngestRun):
    """An :class:`IngestRun` fed by the cluster: each file arrives read, parsed and embedded;
    grouping, accounting and writing are the local engine's."""

    results: Iterator[tuple[_Read, dict[str, np.ndarray]]]

    def go(self) -> None:
        for read, vectors in self.results:
            self.report.embedded += len(vectors.keys() - self.ing._cache.keys())
            self.ing._cache.update(vectors)
            self.take(read)
            if self.full():
                self.flush()
        self.flush()

    def embed_group(self) -> int:
        return 0  # embedded on the cluster, counted as they arrived

    def flush(self) -> None:
        super().flush()
        self.ing._cache.clear()  # only the group's vectors are held
