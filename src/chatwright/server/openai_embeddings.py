"""``/v1/embeddings``: the configured embedder (``embedder`` in chatwright.toml), in OpenAI's
shape.

``model`` names the embedder (``local:all-minilm-l6-v2``, ``test:hash``, ...), or a bot or a
model a bot runs, meaning that bot's embedder. ``input`` is a string or a list of up to 2,048
non-empty strings; token-id input (lists of integers) is a 400, as the embedder reads text.
``encoding_format`` is ``float`` (the default) or ``base64`` (little-endian float32, as
OpenAI sends it); ``dimensions`` is accepted only when it equals the embedder's. ``usage``
counts tokens as whitespace-separated words (the embedders do not report theirs).
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from chatwright.models.embeddings import Embedder
from chatwright.server.deps import CurrentUser, State
from chatwright.server.errors import ApiError, SafeJSONResponse
from chatwright.server.state import ServerState

__all__ = ["EmbeddingsRequest", "embeddings"]

MAX_INPUTS = 2048  # OpenAI's limit per request
MAX_CHARS = 1_000_000  # all inputs together: an embedder reads only the start of long texts


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings body, strictly typed."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    input: str | list[Any]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


async def embeddings(body: EmbeddingsRequest, user: CurrentUser, state: State) -> Any:
    """Embed ``input`` with the embedder ``model`` names (see the module's docstring)."""
    embedder = _embedder(state, body.model)
    texts = _texts(body.input)
    if body.dimensions is not None and body.dimensions != embedder.dim:
        raise ApiError(
            400,
            f"{embedder.name} makes vectors of {embedder.dim} dimensions, not {body.dimensions}",
            hint=f"leave dimensions out, or send {embedder.dim}",
            type="unsupported",
            param="dimensions",
        )
    async with state.turn_slot(user.user):  # counts against max_turns_per_user, as turns do
        vectors = await asyncio.to_thread(embedder.embed, texts)
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
        for i, v in enumerate(vectors)
    ]
    tokens = sum(len(t.split()) for t in texts)
    return SafeJSONResponse(
        {
            "object": "list",
            "data": data,
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def _embedder(state: ServerState, model: str) -> Embedder:
    bots = state.all_bots()
    by_name = {b.index.embedder.name: b.index.embedder for b in bots if b.index.embedder}
    if model in by_name:
        return by_name[model]
    bot = state.bot_for_model(model)
    if bot is None:
        known = ", ".join(by_name) or "none"
        raise ApiError(
            404,
            f"the embedding model {model!r} does not exist here",
            hint=f"use the configured embedder ({known}), or a bot's name for its embedder",
            type="model_not_found",
            param="model",
        )
    if bot.index.embedder is None:
        raise ApiError(
            503,
            f"{model!r} has no embedder: {'; '.join(bot.notes) or 'none is configured'}",
            hint="set embedder in chatwright.toml (e.g. local:all-minilm-l6-v2) and install it",
            type="model_unavailable",
            param="model",
        )
    return bot.index.embedder


def _texts(value: str | list[Any]) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not texts:
        raise _bad("input is empty", "send a string or a non-empty list of strings")
    if len(texts) > MAX_INPUTS:
        raise _bad(f"input has {len(texts)} items; at most {MAX_INPUTS}", "split the request")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise _bad(
                f"input[{i}] is not a string: token ids are not supported",
                "send the text itself (in OpenAIEmbeddings: check_embedding_ctx_length=False)",
            )
        if not text:
            raise _bad(f"input[{i}] is an empty string", "leave empty strings out")
    if sum(len(t) for t in texts) > MAX_CHARS:
        raise _bad(f"input is over {MAX_CHARS:,} characters in all", "split the request")
    return texts


def _bad(message: str, hint: str) -> ApiError:
    return ApiError(400, message, hint=hint, type="invalid_request", param="input")


def _encode(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]
