"""``ollama:<model>``: a local Ollama, through its OpenAI-compatible API (``/v1``).

Thin on purpose: an :class:`~chatwright.models.openai.OpenAIModel` pointed at Ollama, with
Ollama's own ways of failing said in Ollama's terms. The server is ``$OLLAMA_HOST``, read as
Ollama reads it (``127.0.0.1:11434`` by default; ``host``, ``host:port``, ``:port`` or a full
``http(s)://`` URL); no key is needed. Needs the ``openai`` extra (the SDK speaks the wire
format).

:func:`ollama_models` asks a running Ollama which models it has pulled (``/api/tags``), for
``chatwright models``.
"""

from __future__ import annotations

import contextlib
import importlib
import ipaddress
import json
import os
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from chatwright.config import OpenAISettings
from chatwright.errors import ModelError, ModelUnavailable
from chatwright.models.openai import OpenAIModel

__all__ = ["DEFAULT_HOST", "OllamaModel", "ollama_models", "ollama_url"]

DEFAULT_HOST = "http://127.0.0.1:11434"
_DEFAULT_PORT = 11434
_DEFAULT_CONTEXT = 4096  # Ollama's default context length (num_ctx)
_START = "is `ollama serve` running? set OLLAMA_HOST if it listens elsewhere"


def ollama_url(host: str | None = None) -> str:
    """Ollama's base URL (no trailing slash) from ``host`` or ``$OLLAMA_HOST``.

    Read as the ``ollama`` CLI reads it: no scheme means http; no port means 11434 without a
    scheme, else the scheme's default; an address that means "every interface" (``0.0.0.0``,
    ``::``, what a server is told to listen on) is reached on this machine at 127.0.0.1.
    """
    value = (os.environ.get("OLLAMA_HOST", "") if host is None else host).strip()
    if not value:
        return DEFAULT_HOST
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = "http", value
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise ModelUnavailable(
            f"OLLAMA_HOST={value!r} is not an http(s) address",
            hint="set OLLAMA_HOST to host:port or http://host:port, e.g. 127.0.0.1:11434",
        )
    default_port = _DEFAULT_PORT if not sep else (443 if scheme == "https" else 80)
    with contextlib.suppress(ValueError):  # a bare IPv6 address (``::1``): a host, no port
        rest = f"[{ipaddress.IPv6Address(rest.strip('[]'))}]"
    try:
        parts = urlsplit(f"{scheme}://{rest}")
        port = parts.port or default_port
    except ValueError:
        raise ModelUnavailable(
            f"OLLAMA_HOST={value!r} is not a valid address",
            hint="set OLLAMA_HOST to host:port or http://host:port, e.g. 127.0.0.1:11434",
        ) from None
    hostname = parts.hostname or "127.0.0.1"
    try:
        if ipaddress.ip_address(hostname).is_unspecified:
            hostname = "127.0.0.1"
        elif ":" in hostname:
            hostname = f"[{hostname}]"
    except ValueError:
        pass  # a name, not an address
    path = parts.path.rstrip("/")
    return f"{scheme}://{hostname}:{port}{path}"


class OllamaModel(OpenAIModel):
    """A model served by Ollama, spoken to over its OpenAI-compatible chat completions."""

    provider = "ollama"
    server_label = "Ollama server"

    def __init__(
        self, model: str, settings: OpenAISettings | None = None, *, host: str | None = None
    ) -> None:
        base = settings or OpenAISettings(timeout_s=300.0)  # the first call loads the model
        self.host = ollama_url(host)
        # max_retries 0: a stopped Ollama is said at once, not after seconds of back-off
        super().__init__(
            model,
            base.model_copy(
                update={"base_url": f"{self.host}/v1", "api_key": "ollama", "max_retries": 0}
            ),
        )
        self.not_found_hint = f"run `ollama pull {model}` (see `ollama list` for what is there)"
        # What Ollama keeps of a prompt (it drops the start of a longer one, the system prompt
        # first): its OLLAMA_CONTEXT_LENGTH, else its default; [memory] context_tokens wins.
        self.context_window = _context_length()

    @property
    def base_url(self) -> str | None:
        return self.settings.base_url

    def _sdk(self) -> Any:
        try:
            return importlib.import_module("openai")
        except ImportError:
            raise ModelUnavailable(
                "the ollama provider speaks Ollama's OpenAI-compatible API through the "
                "openai package",
                hint='pip install "chatwright[openai]"',
            ) from None

    def _error(self, sdk: Any, error: Any) -> ModelError:
        if isinstance(error, sdk.APITimeoutError):  # a subclass of APIConnectionError
            return ModelUnavailable(
                f"Ollama at {self.host} did not answer {self.name} within "
                f"{self.settings.timeout_s:g} s",
                hint="the model may be loading or too big for this machine: see `ollama ps`, "
                "or try a smaller one (`ollama list`)",
            )
        if isinstance(error, sdk.APIConnectionError):
            return ModelUnavailable(
                f"cannot reach Ollama at {self.host} for {self.name}: {error.message}",
                hint=_START,
            )
        if isinstance(error, sdk.NotFoundError):
            return ModelUnavailable(
                f"Ollama at {self.host} has no model {self.model!r}: {self._detail(error)}",
                hint=self.not_found_hint,
            )
        return super()._error(sdk, error)


def _context_length() -> int:
    value = os.environ.get("OLLAMA_CONTEXT_LENGTH", "").strip()
    return int(value) if value.isdigit() and int(value) >= 256 else _DEFAULT_CONTEXT


def ollama_models(host: str | None = None, *, timeout_s: float = 2.0) -> list[dict[str, Any]]:
    """The models a running Ollama has pulled (``GET /api/tags``): name, size, family.

    Raises :class:`ModelUnavailable` when Ollama cannot be reached or answers oddly.
    """
    url = ollama_url(host)
    try:
        with urllib.request.urlopen(f"{url}/api/tags", timeout=timeout_s) as response:
            body = json.loads(response.read(4_000_000))
    except urllib.error.HTTPError as e:
        raise _not_ollama(url, f"HTTP {e.code}") from None
    except ValueError:
        raise _not_ollama(url, "not JSON") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise ModelUnavailable(f"cannot reach Ollama at {url}: {reason}", hint=_START) from None
    models = body.get("models") if isinstance(body, dict) else None
    if not isinstance(models, list):
        raise _not_ollama(url, "no list of models")
    out = []
    for item in models:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        details = item.get("details") if isinstance(item.get("details"), dict) else {}
        out.append(
            {
                "name": item["name"],
                "size": item.get("size"),
                "family": details.get("family"),
                "parameters": details.get("parameter_size"),
            }
        )
    return out


def _not_ollama(url: str, what: str) -> ModelUnavailable:
    return ModelUnavailable(
        f"{url}/api/tags did not answer as Ollama does ({what})",
        hint="check that OLLAMA_HOST points at Ollama, not another server",
    )
