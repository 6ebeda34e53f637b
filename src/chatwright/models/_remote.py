"""What the SDK-backed providers share: lazy SDK import, key and server lookup, one client,
and the mapping of SDK errors to chatwright's."""

from __future__ import annotations

import importlib
import os
from typing import Any, ClassVar

from pydantic import BaseModel

from chatwright.errors import ModelError, ModelResponseError, ModelUnavailable

__all__ = ["RemoteModel"]

_NO_KEY = "not-needed"  # sent to servers that need no key (local servers, proxies)


class RemoteModel:
    """Base of :class:`OpenAIModel` and :class:`AnthropicModel`.

    Subclasses name their ``provider`` (also the SDK module, the extra, the env-var prefix and
    the chatwright.toml section), the SDK's async client class and the server's default URL.
    """

    provider: ClassVar[str]
    client_class: ClassVar[str]
    default_url: ClassVar[str]
    server_label: ClassVar[str]
    not_found_hint: ClassVar[str]

    def __init__(self, model: str, settings: BaseModel) -> None:
        self.model = model
        self.name = f"{self.provider}:{model}"
        self.settings: Any = settings
        self._client: Any = None

    @property
    def _env(self) -> str:
        return self.provider.upper()

    @property
    def base_url(self) -> str | None:
        """The configured server, or ``None`` for the SDK's default."""
        return self.settings.base_url or os.environ.get(f"{self._env}_BASE_URL") or None

    def _api_key(self) -> str:
        key = self.settings.api_key or os.environ.get(f"{self._env}_API_KEY")
        if key:
            return key
        if self.base_url:
            return _NO_KEY
        raise ModelUnavailable(
            f"no API key for {self.name}",
            hint=f"set {self._env}_API_KEY, or api_key under [{self.provider}] in "
            "chatwright.toml (or base_url there for a server that needs no key)",
        )

    def check(self) -> None:
        """Raise :class:`ModelUnavailable` when no call can be made (the SDK is missing, or
        there is no key); nothing is sent. A turn checks this before it stores anything."""
        self._sdk()
        self._api_key()

    def _sdk(self) -> Any:
        try:
            return importlib.import_module(self.provider)
        except ImportError:
            raise ModelUnavailable(
                f"the {self.provider} provider needs the {self.provider} package",
                hint=f'pip install "chatwright[{self.provider}]"',
            ) from None

    def _get_client(self, sdk: Any) -> Any:
        if self._client is None:
            self._client = getattr(sdk, self.client_class)(
                api_key=self._api_key(),
                base_url=self.base_url,
                timeout=self.settings.timeout_s,
                max_retries=self.settings.max_retries,
            )
        return self._client

    def _detail(self, error: Any) -> str:
        """The server's own words about an error."""
        return str(error.message)

    def _error(self, sdk: Any, error: Any) -> ModelError:
        where = self.base_url or self.default_url
        if isinstance(error, sdk.APIConnectionError):
            return ModelUnavailable(
                f"cannot reach the {self.server_label} at {where}: {error.message}",
                hint=f"is the server running? check [{self.provider}] base_url in "
                f"chatwright.toml or {self._env}_BASE_URL, and your network",
            )
        detail = self._detail(error)
        if isinstance(error, sdk.AuthenticationError):
            return ModelUnavailable(
                f"{where} rejected the API key (HTTP 401): {detail}",
                hint=f"check {self._env}_API_KEY, or api_key under [{self.provider}] in "
                "chatwright.toml",
            )
        if isinstance(error, sdk.NotFoundError):
            return ModelUnavailable(
                f"model {self.model!r} was not found at {where} (HTTP 404): {detail}",
                hint=self.not_found_hint,
            )
        if isinstance(error, sdk.APIStatusError) and error.status_code >= 400:
            return ModelResponseError(f"{where} answered HTTP {error.status_code}: {detail}")
        return ModelResponseError(f"{where} sent an error: {detail}")  # e.g. mid-stream
