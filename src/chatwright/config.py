"""Typed settings, read from chatwright.toml and CHATWRIGHT_* environment variables.

Precedence, highest first: arguments given in code (or on the command line), environment
variables (``CHATWRIGHT_MODEL``, ``CHATWRIGHT_OPENAI__BASE_URL`` for nested ones), the config
file, the defaults below. The config file is the one named by ``--config`` /
``CHATWRIGHT_CONFIG``, else ``./chatwright.toml`` when it exists.

Settings are a value passed down to whatever needs them, never a module global.
"""

from __future__ import annotations

import os
import re
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from chatwright.errors import ConfigError

__all__ = [
    "AnthropicSettings",
    "BotSettings",
    "KnowledgeSettings",
    "LocalSettings",
    "MCPServerSettings",
    "MemorySettings",
    "OpenAISettings",
    "RoutingSettings",
    "ServerSettings",
    "Settings",
    "ToolsSettings",
    "WebSearchSettings",
    "WebSettings",
    "default_data_dir",
    "find_config_file",
    "load_settings",
]


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "chatwright"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenAISettings(_Section):
    """Any OpenAI-compatible server: OpenAI, vLLM, Ollama, llama.cpp server, LM Studio."""

    base_url: str | None = None  # default: OPENAI_BASE_URL, else api.openai.com
    api_key: str | None = None  # default: OPENAI_API_KEY
    timeout_s: float = 60.0
    max_retries: int = 2


class AnthropicSettings(_Section):
    base_url: str | None = None
    api_key: str | None = None  # default: ANTHROPIC_API_KEY
    timeout_s: float = 60.0
    max_retries: int = 2


class LocalSettings(_Section):
    """The embedded llama.cpp model."""

    model_path: Path | None = None  # a GGUF file; default: the packaged Gemma 3 270M
    n_ctx: int = Field(default=4096, ge=256)
    n_threads: int | None = Field(default=None, ge=1)
    seed: int = 0


class MemorySettings(_Section):
    """What of a thread the model sees: strategy, token shares, summaries, recall."""

    strategy: Literal["window", "tokens", "summary"] = "summary"
    recall: bool = True  # bring back older turns that match the new message
    window_turns: int = Field(default=10, ge=1)  # for strategy = "window"
    context_tokens: int | None = Field(default=None, ge=256)  # default: the model's window
    user_memory_tokens: int = Field(default=300, ge=0)
    summary_tokens: int = Field(default=400, ge=0)
    recall_tokens: int = Field(default=400, ge=0)
    recall_k: int = Field(default=3, ge=0)
    passages_tokens: int = Field(default=1500, ge=0)
    summarize_after_tokens: int = Field(default=800, ge=1)  # out-of-window text that triggers it
    summarize_batch_tokens: int = Field(default=3000, ge=100)  # most new text per update
    summarizer_model: str | None = None  # default: the chat model
    summary_timeout_s: float = Field(default=120.0, gt=0)


class KnowledgeSettings(_Section):
    """Answering from documents: which collections, how many passages, follow-up rewriting."""

    collections: list[str] = Field(default_factory=list)  # empty: all of the user's
    # Passages retrieved per turn (then fitted to their share of the window). Default: 5, or 2
    # for the embedded model: measured, it answers from 2 passages correctly and mixes up 4.
    k: int | None = Field(default=None, ge=1, le=50)
    # How a follow-up ("and its price?") becomes a standalone query: "llm" asks the chat model,
    # "concat" prefixes the previous question, "auto" is llm for remote models and concat for
    # the embedded one (too small to rewrite reliably), "off" searches the message as is.
    rewrite: Literal["auto", "llm", "concat", "off"] = "auto"
    rewrite_timeout_s: float = Field(default=30.0, gt=0)
    # How an answer from documents is made (issue 19): "generate" asks the chat model,
    # "extract" quotes the passages' best sentences with their [n], "auto" quotes for the
    # embedded model (measured on MTRAG: its generated answers score half as well as quotes
    # and rarely cite) and generates for remote ones. Per request: the API's answer_mode,
    # the CLI's --answer-mode.
    answer_mode: Literal["auto", "generate", "extract"] = "auto"
    # Extract mode, tuned on MTRAG-UN dev (chatwright eval answers, MiniLM embedder): sentences
    # quoted (answerable ROUGE-L 0.296 / 0.306 / 0.303 for 3 / 4 / 5), the share of keyword
    # overlap added to cosine similarity (0.1 / 0.2 / 0.3: 0.284 / 0.296 / 0.297), and the score
    # under which the documents are said not to answer (0.45: 65% of unanswerable tasks
    # declined for -0.011 ROUGE-L on answerable ones; -1 never declines). Another embedder
    # needs its own.
    extract_sentences: int = Field(default=4, ge=1, le=10)
    extract_keyword_weight: float = Field(default=0.2, ge=0.0, le=2.0)
    extract_min_score: float = Field(default=0.45, ge=-1.0, le=3.0)


class RoutingSettings(_Section):
    """Which collections a turn searches: a chain of strategies, the first sure one wins; when
    none is sure, all collections. Greetings and small talk route to none."""

    strategy: list[Literal["rules", "semantic", "llm", "all"]] = Field(
        default_factory=lambda: ["rules", "semantic"]
    )
    rules: dict[str, list[str]] = Field(default_factory=dict)  # collection -> regexes
    # Semantic router (routing/router.py, SemanticRouter): evidence from the query's nearest
    # chunks across collections and their profiles; decisions relative to the best collection.
    # Calibrated for the MiniLM embedder on the train halves of routing-dev (6 overlapping
    # public collections, 400 questions) and of evals/routing together (python -m
    # chatwright.evals.routing DIR... --tune): another embedder wants its own calibration.
    margin: float = Field(default=0.0, ge=0.0)  # a runner-up this close to the best is added
    min_share: float = Field(default=0.15, ge=0.0, le=1.0)  # ...if it has this share of votes
    mix: float = Field(default=0.5, ge=0.0, le=1.0)  # description vs chunk centroid
    chunk_weight: float = Field(default=0.7, ge=0.0, le=1.0)  # best-matching chunk
    vote_weight: float = Field(default=0.0, ge=0.0, le=1.0)  # share of the nearest chunks
    vote_k: int = Field(default=40, ge=1, le=200)  # nearest chunks searched across collections
    temperature: float = Field(default=0.05, gt=0.0)  # vote weight exp((cos - top) / t)
    size_penalty: float = Field(default=0.06, ge=0.0)  # score - this * ln(chunks)
    keyword_share: float = Field(default=2.0, ge=0.0)  # > 1: off (measured: no gain)
    keyword_margin: float = Field(default=0.03, ge=0.0)
    # the keywords single a collection out (its best BM25 match >= keyword_lead x any other
    # collection's; 0: off) and it is taken instead of the best when within keyword_lead_margin
    # (the keyword search is made only when a second collection scores that close)
    keyword_lead: float = Field(default=1.8, ge=0.0)
    keyword_lead_margin: float = Field(default=0.15, ge=0.0)
    # the query's phrases (two neighbouring words) single a collection out: its keyword matches
    # hold >= phrase_lead of them and no other collection's hold any (0: off); it is taken
    # instead of the best when within phrase_margin (routing-dev train 0.885 -> 0.90)
    phrase_lead: int = Field(default=2, ge=0)
    phrase_margin: float = Field(default=0.15, ge=0.0)
    # how common the query's keywords are in each collection against the others (keyword index
    # counts, Dirichlet-smoothed with mu = vocabulary_smoothing x the mean collection's chunks):
    # score + vocabulary_weight x (its fit - the best fit); 0: off (routing-dev all 400
    # 0.8975 -> 0.91, the shipped set's test half 0.951 unchanged)
    vocabulary_weight: float = Field(default=0.06, ge=0.0)
    vocabulary_smoothing: float = Field(default=2.0, gt=0.0)
    clauses: bool = True  # a message asking two things: route each clause (an embedding each)
    clause_score: float = 0.1  # ...and add a clause's best collection scoring at least this
    floor: float = 0.0  # best chunk below this: unsure, search unsure_k collections
    unsure_k: int = Field(default=2, ge=1)
    chitchat_threshold: float = 0.4  # nearest small-talk exemplar at least this...
    chitchat_margin: float = 0.0  # ...and this above the best chunk: no collection
    # The previous semantic router's settings: accepted so that older chatwright.toml files
    # still load, and ignored.
    threshold: float | None = None
    also: float | None = None
    llm_model: str | None = None  # default: the chat model
    llm_timeout_s: float = Field(default=10.0, gt=0)


class ToolsSettings(_Section):
    """The agent loop's bounds, which built-in tools the model gets, which calls run unasked."""

    # Built-in tools offered to the model. Default (None): search_knowledge and remember for
    # remote models, none for the embedded one (see benchmarks/README.md: it picks tools poorly).
    # fetch_url and web_search (the web, see [web]) are offered only when listed here.
    builtin: list[Literal["search_knowledge", "remember", "fetch_url", "web_search"]] | None = None
    # Tools with side effects that run without asking, while the turn has read nothing
    # untrusted (documents, tool output). "*" means all of them. remember only writes the
    # user's own memory, which they can see and delete.
    auto_approve: list[str] = Field(default_factory=lambda: ["remember"])
    max_steps: int = Field(default=6, ge=1, le=100)  # model calls per turn
    max_tool_calls: int = Field(default=12, ge=0, le=1000)
    max_parallel: int = Field(default=8, ge=1, le=64)
    token_budget: int = Field(default=60_000, ge=1)  # tokens in + out over all steps of a turn
    time_limit_s: float = Field(default=180.0, gt=0)  # wall time of the whole loop
    tool_timeout_s: float = Field(default=30.0, gt=0)  # default per tool
    max_output_chars: int = Field(default=16_000, ge=100)  # longer tool output is cut, with a note
    approval_timeout_s: float = Field(default=300.0, gt=0)  # no answer in time means no


class WebSearchSettings(_Section):
    """``[web.search]``: the backend of the ``web_search`` tool (none: the tool is off)."""

    backend: Literal["searxng", "tavily", "brave"] | None = None
    url: str | None = None  # SearXNG: its address; Tavily/Brave: default their public API
    api_key: str | None = None  # Tavily/Brave; default: TAVILY_API_KEY / BRAVE_API_KEY
    max_results: int = Field(default=5, ge=1, le=20)
    timeout_s: float = Field(default=15.0, gt=0)

    @model_validator(mode="after")
    def _complete(self) -> WebSearchSettings:
        if self.backend == "searxng" and not self.url:
            raise ValueError("the searxng backend needs url, e.g. http://localhost:8888")
        return self


class WebSettings(_Section):
    """``[web]``: reading web pages (``chatwright ingest https://…``, the ``fetch_url`` tool).

    Private, loopback, link-local and cloud-metadata addresses are never fetched unless their
    host is in ``allow_hosts`` (names, ``*.example.com``, addresses) or their address in
    ``allow_networks`` (CIDR): see ``chatwright/netguard.py``."""

    allow_hosts: list[str] = Field(default_factory=list)
    allow_networks: list[str] = Field(default_factory=list)
    max_page_mb: float = Field(default=10.0, gt=0, le=1024)  # longer pages are cut there
    max_redirects: int = Field(default=5, ge=0, le=30)
    timeout_s: float = Field(default=20.0, gt=0)  # one connect or read
    time_limit_s: float = Field(default=30.0, gt=0)  # one page, redirects included (fetch_url:
    # at most the tool's budget, [tools] tool_timeout_s)
    max_pages: int = Field(default=50, ge=1)  # per ingest run (--max-pages)
    concurrency: int = Field(default=2, ge=1, le=16)  # pages fetched at once, one site
    respect_robots: bool = True  # ingest obeys robots.txt (fetch_url, acting for a user, not)
    user_agent: str = "chatwright/0.1"
    fetch_max_chars: int = Field(default=12_000, ge=200)  # fetch_url's answer, at most
    search: WebSearchSettings = Field(default_factory=WebSearchSettings)

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not a network (write e.g. 10.0.0.0/8)") from None
        return value


class MCPServerSettings(_Section):
    """One MCP server: ``command`` (stdio) or ``url`` (streamable HTTP), not both."""

    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: Path | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    prefix: str | None = None  # tool names become "<prefix>_<tool>"; default: the server's name
    enabled: bool = True
    timeout_s: float = Field(default=30.0, gt=0)  # start-up and each call
    # Which of its tools have side effects: "auto" trusts the server's readOnlyHint annotation
    # (unannotated tools count as having side effects), "all" or "none" overrides it.
    side_effects: Literal["auto", "all", "none"] = "auto"

    @model_validator(mode="after")
    def _one_transport(self) -> MCPServerSettings:
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of command (stdio) or url (streamable HTTP)")
        return self


class ServerSettings(_Section):
    """``chatwright serve``: where it listens, who may use it, how much a request may send."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # "auto": on loopback with no API keys in the store, requests act as `user` (any bearer
    # accepted); once a key exists, a key is required. "keys": a key is always required.
    # "none": no keys, everyone is `user` (loopback only). Off loopback, keys are required.
    auth: Literal["auto", "keys", "none"] = "auto"
    default_bot: str = "default"  # the bot a request gets when it names none
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)  # any request but uploads
    max_upload_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)  # one upload request
    cors_origins: list[str] = Field(default_factory=list)  # other origins allowed to call
    preload: bool = True  # load the users' collections into memory at start-up
    shutdown_grace_s: float = Field(default=30.0, ge=0)  # running turns may finish meanwhile
    ingest_workers: int = Field(default=1, ge=1)  # threads ingesting uploads, per replica
    # Per user: uploads queued or ingesting (all replicas), turns running at once (per replica);
    # past either, a 429 with Retry-After. 0: no limit.
    max_jobs_per_user: int = Field(default=20, ge=0)
    max_turns_per_user: int = Field(default=4, ge=0)
    # Connections (uvicorn): a request's headers must arrive within header_timeout_s of the
    # connection opening (or of the previous answer), its body must not pause for longer than
    # body_timeout_s (408, then closed); a client address may hold max_connections_per_client
    # connections (0: no limit; behind a reverse proxy every client has the proxy's address).
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    max_connections_per_client: int = Field(default=32, ge=0)
    # Replicas (several `chatwright serve` on one database): a turn's events reach the store
    # within stream_flush_s (then any replica can resume the stream, and approvals or cancels
    # posted to another replica reach the turn); a replica that wrote nothing for
    # replica_stale_s (it heartbeats every replica_heartbeat_s) is taken for dead.
    stream_flush_s: float = Field(default=0.1, gt=0, le=5)
    replica_heartbeat_s: float = Field(default=2.0, gt=0, le=60)
    replica_stale_s: float = Field(default=10.0, gt=0)


_BOT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class BotSettings(_Section):
    """One ``[bots.<name>]``: a bot served under its name; unset fields come from the top."""

    description: str = ""
    model: str | None = None
    system_prompt: str | None = None
    collections: list[str] | None = None  # which collections it searches (None: as the top)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_answer_tokens: int | None = Field(default=None, ge=1)

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str | None) -> str | None:
        if value is not None and ":" not in value:
            raise ValueError("must be 'provider:model', e.g. local:gemma-3-270m or openai:gpt-4o")
        return value


class Settings(BaseSettings):
    """All of chatwright's settings, with their defaults."""

    model_config = SettingsConfigDict(
        env_prefix="CHATWRIGHT_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    model: str = "local:gemma-3-270m"
    data_dir: Path = Field(default_factory=default_data_dir)
    # Where everything is stored: None is the SQLite file in data_dir (one person);
    # "postgresql://user:pass@host/db" shares one PostgreSQL among server replicas (teams).
    database_url: str | None = None
    user: str = Field(default="local", min_length=1, max_length=200)
    system_prompt: str = "You are a helpful assistant. Answer briefly and accurately."
    max_message_chars: int = Field(default=32_000, ge=1)
    history_messages: int = Field(default=40, ge=0)  # most recent messages a turn considers
    max_answer_tokens: int = Field(default=512, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    model_timeout_s: float = Field(default=300.0, gt=0)
    embedder: str | None = "local:all-minilm-l6-v2"  # for recall and documents; None: keywords
    store_traces: bool = True
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    anthropic: AnthropicSettings = Field(default_factory=AnthropicSettings)
    local: LocalSettings = Field(default_factory=LocalSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    knowledge: KnowledgeSettings = Field(default_factory=KnowledgeSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    tools: ToolsSettings = Field(default_factory=ToolsSettings)
    mcp: dict[str, MCPServerSettings] = Field(default_factory=dict)  # [mcp.<name>] sections
    server: ServerSettings = Field(default_factory=ServerSettings)
    web: WebSettings = Field(default_factory=WebSettings)  # [web] and [web.search]
    bots: dict[str, BotSettings] = Field(default_factory=dict)  # [bots.<name>] sections

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if ":" not in value:
            raise ValueError("must be 'provider:model', e.g. local:gemma-3-270m or openai:gpt-4o")
        return value

    @field_validator("bots")
    @classmethod
    def _bot_names(cls, value: dict[str, BotSettings]) -> dict[str, BotSettings]:
        for name in value:
            if not re.match(_BOT_NAME, name):
                raise ValueError(
                    f"bot name {name!r}: use 1-64 letters, digits, '_', '.' or '-' (no ':')"
                )
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        scheme = value.partition("://")[0].lower()
        if scheme not in ("sqlite", "postgresql", "postgres"):
            raise ValueError(
                "must be postgresql://user:password@host:5432/dbname or sqlite:///path/to/file.db"
            )
        return value.strip()

    @model_validator(mode="after")
    def _web_search_backend(self) -> Settings:
        if "web_search" in (self.tools.builtin or []) and self.web.search.backend is None:
            raise ValueError(
                "tools.builtin lists web_search but [web.search] names no backend: set "
                'backend = "searxng" (with url), "tavily" or "brave" (with api_key)'
            )
        return self

    @property
    def db_path(self) -> Path:
        return self.data_dir / "chatwright.db"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FileSource(settings_cls))


_FILE_VALUES: ContextVar[dict[str, Any] | None] = ContextVar("chatwright_file", default=None)


class _FileSource(PydanticBaseSettingsSource):
    """The values of the config file being loaded (parsed by :func:`load_settings`)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return (_FILE_VALUES.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_VALUES.get() or {})


def find_config_file(explicit: str | Path | None = None) -> Path | None:
    """The config file: ``explicit``, else ``$CHATWRIGHT_CONFIG``, else ./chatwright.toml."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"config file {str(path)!r} does not exist",
                hint="pass the path of a chatwright.toml, or leave --config out",
            )
        return path
    env = os.environ.get("CHATWRIGHT_CONFIG")
    if env:
        return find_config_file(env)
    local = Path("chatwright.toml")
    return local if local.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        # TOML is UTF-8; a byte order mark (Notepad writes one) is allowed.
        return tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        line = e.object.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} on line {line})",
            hint="save it as UTF-8 (TOML files are always UTF-8)",
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(
            f"{path} is not valid TOML: {e}",
            hint='fix the line named above (TOML syntax: key = "value")',
        ) from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None


def _describe(error: ValidationError, source: str) -> ConfigError:
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(settings)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown setting")
        else:
            lines.append(f"  {where}: {item['msg']} (got {item.get('input')!r})")
    return ConfigError(
        f"invalid settings ({source}):\n" + "\n".join(lines),
        hint="see the Configuration section of the README for every setting",
    )


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Read settings from the config file, the environment and ``overrides`` (None ignored)."""
    path = find_config_file(config_file)
    values = _read_toml(path) if path else {}
    token = _FILE_VALUES.set(values)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        raise _describe(e, str(path) if path else "environment or arguments") from None
    finally:
        _FILE_VALUES.reset(token)
