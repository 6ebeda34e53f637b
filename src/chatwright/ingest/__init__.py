"""Documents into collections: loaders, structure-following chunking, the idempotent pipeline.

Ingest never runs inside a turn. ``chatwright ingest PATH... --collection NAME`` (``command.py``)
or, from Python::

    store = open_store(settings)                  # SQLite file or PostgreSQL
    index = SearchIndex.for_store(store, get_embedder())
    report = Ingestor(store, index, owner="ada").ingest(["docs/"], "handbook")
"""

from chatwright.ingest.chunking import TextChunk, chunk_sections
from chatwright.ingest.loaders import LoadedDocument, Section, Skipped, UnreadableFile, load, parse
from chatwright.ingest.pipeline import Ingestor, IngestReport, Progress

__all__ = [
    "IngestReport",
    "Ingestor",
    "LoadedDocument",
    "Progress",
    "Section",
    "Skipped",
    "TextChunk",
    "UnreadableFile",
    "chunk_sections",
    "load",
    "parse",
]
