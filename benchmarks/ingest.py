"""Ingest throughput of ``chatwright.ingest`` over a generated Markdown corpus.

What it measures
----------------
* **parse + chunk**: loaders and chunking alone, in memory (no database), chunks per second.
* **ingest, keyword only** (no embedder): the whole pipeline — find files, read, SHA-256,
  parse, chunk, then one transaction per document (``put_document`` + the search index's
  writes, FTS5 included) into a SQLite file with the store's settings (WAL,
  ``synchronous=FULL``: one fsync per document). Chunks per second over the run.
* **re-ingest, unchanged**: the same files again; each is read and hashed, nothing parsed.
* **ingest with the local embedder** (``local:all-minilm-l6-v2``, when installed, or
  ``--embedder``: ``local:all-minilm-l6-v2?precision=fp32`` for the float32 graph): the same,
  with every chunk embedded; skipped when the model cannot load.

Data: ``--files`` Markdown files (default 300), each with a title, 4-6 sections of 2-4
subsections, and paragraphs of 2-7 sentences drawn from a fixed vocabulary; seeded.
``--format pdf`` writes the same text as PDFs (45 lines a page, one Helvetica text object per
page): parsing with pypdf then costs about as much as the rest of the keyword-only pipeline,
the case where running it ahead of embedding (the pipeline's reader thread) can pay.

Target (printed PASS/FAIL, exit code 0 either way): >= 2,000 chunks/s ingested without
embedding on a 2-core machine.

Run: ``.venv/bin/python benchmarks/ingest.py`` (``--help`` for options); writes
``benchmarks/results/ingest.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if (ROOT / "src" / "chatwright").is_dir() and str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

from chatwright.errors import ChatwrightError  # noqa: E402
from chatwright.ingest import Ingestor, chunk_sections, parse  # noqa: E402
from chatwright.retrieval.index import SearchIndex  # noqa: E402
from chatwright.store import SQLiteStore  # noqa: E402

TARGET = 2_000.0
_VOCABULARY = (
    "install configure server client request response token index search vector keyword "
    "document collection thread message model answer question user owner store database file "
    "page section heading paragraph chunk embed batch cache hash source title path the a of "
    "to and in is that for with on as by it this be are from at or an can when"
)
WORDS = _VOCABULARY.split()


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(6, 22))).capitalize() + "."


def paragraph(rng: random.Random) -> str:
    return " ".join(sentence(rng) for _ in range(rng.randint(2, 7)))


def document(rng: random.Random, i: int) -> str:
    parts = [f"# Document {i}\n", paragraph(rng)]
    for s in range(rng.randint(4, 6)):
        parts.append(f"\n## Section {s}\n")
        for sub in range(rng.randint(2, 4)):
            parts.append(f"\n### Topic {s}.{sub}\n")
            parts.extend(paragraph(rng) + "\n" for _ in range(rng.randint(1, 4)))
    return "\n".join(parts)


def make_corpus(root: Path, files: int, seed: int, fmt: str = "md") -> int:
    rng = random.Random(seed)
    total = 0
    for i in range(files):
        folder = root / f"part{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        text = document(rng, i)
        data = pdf(text, f"Document {i}") if fmt == "pdf" else text.encode()
        (folder / f"doc{i:04}.{fmt}").write_bytes(data)
        total += len(data)
    return total


def pdf(text: str, title: str, lines_per_page: int = 45) -> bytes:
    """A minimal valid PDF showing ``text``'s lines, wrapped at 90 characters."""
    lines = [w for line in text.splitlines() for w in (textwrap.wrap(line, 90) or [""])]
    pages = [lines[i : i + lines_per_page] for i in range(0, len(lines), lines_per_page)]
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, page in enumerate(pages):
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources"
            f" << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode()
        )
        ops = ["BT /F1 10 Tf 14 TL 50 750 Td"]
        ops += [
            "(" + line.replace("\\", "").replace("(", "").replace(")", "") + ") Tj T*"
            for line in page
        ]
        stream = "\n".join([*ops, "ET"]).encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    objects.append(f"<< /Title ({title}) >>".encode())
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\n" % (len(objects) + 1, len(objects))
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def parse_and_chunk(root: Path, chunk_tokens: int, overlap: int) -> dict[str, Any]:
    start = time.perf_counter()
    chunks = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        doc = parse(path.name, path.read_bytes())
        chunks += len(chunk_sections(doc.sections, max_tokens=chunk_tokens, overlap=overlap))
    seconds = time.perf_counter() - start
    return {"chunks": chunks, "seconds": round(seconds, 3), "chunks_per_s": round(chunks / seconds)}


def run_ingest(
    db: Path, root: Path, embedder: Any, chunk_tokens: int, overlap: int
) -> dict[str, Any]:
    store = SQLiteStore(db)
    try:
        index = SearchIndex(store, embedder)
        ingestor = Ingestor(store, index, "bench", chunk_tokens=chunk_tokens, overlap=overlap)
        first = ingestor.ingest([root], "bench")
        again = ingestor.ingest([root], "bench")
    finally:
        store.close()
    assert not first.skipped and again.unchanged == first.added
    return {
        "files": first.files,
        "chunks": first.chunks_written,
        "embedded": first.embedded,
        "seconds": round(first.seconds, 3),
        "files_per_s": round(first.files / first.seconds, 1),
        "chunks_per_s": round(first.chunks_written / first.seconds),
        "unchanged_seconds": round(again.seconds, 3),
        "unchanged_files_per_s": round(again.files / again.seconds),
    }


def local_embedder(name: str) -> Any:
    from chatwright.models.embeddings import get_embedder

    try:
        embedder = get_embedder(name)
        embedder.embed(["warm up"])  # loads the weights: not counted
        return embedder
    except ChatwrightError as e:
        print(f"local embedder unavailable: {e.message}", file=sys.stderr)
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--chunk-tokens", type=int, default=300)
    parser.add_argument("--overlap", type=int, default=45)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-embed", action="store_true", help="skip the embedder run")
    parser.add_argument(
        "--embedder",
        default="local:all-minilm-l6-v2",
        help="for the embedder run; local:all-minilm-l6-v2?precision=fp32 for float32",
    )
    parser.add_argument("--format", choices=("md", "pdf"), default="md", help="corpus files")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ingest.json")
    args = parser.parse_args()

    results: dict[str, Any] = {
        "benchmark": "ingest",
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "corpus": {"files": args.files, "format": args.format, "seed": args.seed},
        "chunking": {"chunk_tokens": args.chunk_tokens, "overlap": args.overlap},
        "embedder": None if args.no_embed else args.embedder,
        "load_average": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        results["corpus"]["bytes"] = make_corpus(root, args.files, args.seed, args.format)
        results["parse_and_chunk"] = parse_and_chunk(root, args.chunk_tokens, args.overlap)
        results["keyword_only"] = run_ingest(
            Path(tmp) / "k.db", root, None, args.chunk_tokens, args.overlap
        )
        embedder = None if args.no_embed else local_embedder(args.embedder)
        if embedder is not None:
            results["local_minilm"] = run_ingest(
                Path(tmp) / "e.db", root, embedder, args.chunk_tokens, args.overlap
            )
    rate = results["keyword_only"]["chunks_per_s"]
    results["target"] = {"chunks_per_s": TARGET, "pass": rate >= TARGET}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")

    pc, ko = results["parse_and_chunk"], results["keyword_only"]
    kind = "PDF" if args.format == "pdf" else "Markdown"
    print(f"corpus: {args.files} {kind} files, {results['corpus']['bytes'] / 1e6:.1f} MB")
    print(f"parse + chunk:          {pc['chunks']} chunks, {pc['chunks_per_s']:,} chunks/s")
    print(
        f"ingest, keyword only:   {ko['chunks']} chunks in {ko['seconds']} s: "
        f"{ko['chunks_per_s']:,} chunks/s, {ko['files_per_s']} files/s "
        f"[{'PASS' if rate >= TARGET else 'FAIL'} >= {TARGET:,.0f}]"
    )
    print(
        f"re-ingest, unchanged:   {ko['unchanged_seconds']} s "
        f"({ko['unchanged_files_per_s']:,} files/s)"
    )
    if "local_minilm" in results:
        lm = results["local_minilm"]
        print(
            f"ingest, local MiniLM:   {lm['chunks']} chunks in {lm['seconds']} s: "
            f"{lm['chunks_per_s']:,} chunks/s"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
