"""Chat models behind one small Protocol, named ``provider:model``.

=============  ==============================================  =========================
provider       what it talks to                                install
=============  ==============================================  =========================
``local``      embedded llama.cpp (default local:gemma-3-270m)  ``chatwright[local]``
``openai``     OpenAI and every OpenAI-compatible server       ``chatwright[openai]``
``anthropic``  Anthropic's Messages API                        ``chatwright[anthropic]``
``ollama``     a local Ollama at $OLLAMA_HOST                  ``chatwright[openai]``
``test``       deterministic fakes: echo, slow, context        (built in)
=============  ==============================================  =========================

Providers are imported only when named, so a missing extra fails with the command to fix it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chatwright.errors import UnknownModel
from chatwright.models.base import Model, ModelEvent, ModelRequest, ModelSettings, ToolSpec

if TYPE_CHECKING:
    from chatwright.config import Settings

__all__ = [
    "PROVIDERS",
    "Model",
    "ModelEvent",
    "ModelRequest",
    "ModelSettings",
    "ToolSpec",
    "get_model",
    "is_remote",
    "split_name",
]

PROVIDERS = ("local", "openai", "anthropic", "ollama", "test")
# Served by a model server (a hosted API, or Ollama's), big enough to pick tools, rewrite
# queries and write titles; "local" (the small embedded model) and "test" are not.
REMOTE_PROVIDERS = ("openai", "anthropic", "ollama")


def is_remote(model_name: str) -> bool:
    """Whether ``model_name`` (``provider:model``) is served by a model server rather than
    embedded: what decides the defaults that need a capable model (built-in tools, query
    rewriting, model-written titles)."""
    provider, sep, _ = model_name.partition(":")
    return bool(sep) and provider in REMOTE_PROVIDERS


def split_name(name: str) -> tuple[str, str]:
    provider, sep, model = name.partition(":")
    if not sep or not provider or not model:
        raise UnknownModel(
            f"model name {name!r} is not of the form 'provider:model'",
            hint="e.g. local:gemma-3-270m, openai:gpt-4o-mini, anthropic:claude-sonnet-4-5",
        )
    return provider, model


def get_model(name: str, settings: Settings | None = None) -> Model:
    """The model called ``name`` (``provider:model``), configured from ``settings``."""
    from chatwright.config import Settings

    settings = settings or Settings()
    provider, model = split_name(name)
    if provider == "test":
        from chatwright.models.test import test_model

        return test_model(model)
    if provider == "local":
        from chatwright.models.local import local_model

        return local_model(model, settings.local)
    if provider == "openai":
        from chatwright.models.openai import OpenAIModel

        return OpenAIModel(model, settings.openai)
    if provider == "anthropic":
        from chatwright.models.anthropic import AnthropicModel

        return AnthropicModel(model, settings.anthropic)
    if provider == "ollama":
        from chatwright.models.ollama import OllamaModel

        return OllamaModel(model)
    raise UnknownModel(
        f"unknown model provider {provider!r} in {name!r}",
        hint=f"providers: {', '.join(PROVIDERS)}",
    )
