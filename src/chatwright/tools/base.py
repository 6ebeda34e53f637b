"""A tool: a typed Python function the model may call, with its JSON schema and its limits.

The schema comes from the function's type hints and its docstring (Google, NumPy or reST
style), through pydantic. Arguments are validated before the call; what is wrong with them goes
back to the model as the tool's result, so it can correct itself. A tool's output is turned
into text here, once: strings as they are, anything else as JSON, cut to a size limit with a
note. Sync functions run in worker threads, async ones on the loop; both under a timeout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, get_args, get_origin, get_type_hints, overload

import pydantic
import pydantic_core

from chatwright.errors import ConfigError
from chatwright.models.base import ToolSpec

__all__ = [
    "Tool",
    "ToolContext",
    "ToolOutput",
    "ToolRetry",
    "tool",
]

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what every provider accepts as a tool name
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_OUTPUT_CHARS = 16_000

# Sync tools run here, not in the loop's default executor: a hung tool keeps a thread busy
# until it returns (Python cannot kill a thread), and must not starve everything else.
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="chatwright-tool")


class ToolRetry(Exception):  # a signal to the model, not a failure of ours
    """Raise from a tool to send ``message`` back to the model so it can try again."""


@dataclass(frozen=True)
class ToolContext:
    """What a tool may ask for by declaring a parameter of this type (never shown to the model).

    ``bot`` is the :class:`chatwright.Chatbot` running the turn; ``owner`` and ``thread_id`` say
    whose turn it is, so a tool reads and writes only that user's data. ``untrusted`` names
    the text the user did not write that was in the model's context when it made the call
    (``chatwright.trust``; empty: none), so what the tool writes can be marked as such.
    """

    owner: str
    thread_id: str
    bot: Any = None
    turn: Any = None  # the running turn (built-in tools add citations to it)
    untrusted: tuple[str, ...] = ()


@dataclass(frozen=True)
class ToolOutput:
    """A tool's result as the model will read it."""

    content: str
    is_error: bool = False
    truncated: bool = False
    ms: float = 0.0


@dataclass
class Tool:
    """A function the model may call.

    Build one with :func:`tool` (a decorator) or :meth:`from_function`; subclasses (MCP tools)
    override :meth:`invoke` and give their own ``parameters`` schema.
    """

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    side_effects: bool = False
    timeout_s: float | None = DEFAULT_TIMEOUT_S
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS
    function: Callable[..., Any] | None = None
    source: str = "python"  # "python", "builtin", or "mcp:<server>"
    _validator: pydantic.TypeAdapter[Any] | None = field(default=None, repr=False)
    _context_param: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise ConfigError(
                f"invalid tool name {self.name!r}",
                hint="use 1-64 letters, digits, '_' or '-' (what every provider accepts)",
            )

    # -- building -------------------------------------------------------------------------
    @classmethod
    def from_function(
        cls,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        side_effects: bool = False,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
        source: str = "python",
    ) -> Tool:
        """A tool from a typed function: its hints give the schema, its docstring the text."""
        summary, param_docs = _parse_docstring(function)
        fields, context_param = _fields(function, param_docs)
        model = pydantic.create_model(  # type: ignore[call-overload]
            f"{function.__name__}_arguments",
            __config__=pydantic.ConfigDict(extra="forbid"),
            **fields,
        )
        return cls(
            name=name or function.__name__,
            description=description if description is not None else summary,
            parameters=_clean_schema(model.model_json_schema()),
            side_effects=side_effects,
            timeout_s=timeout_s,
            max_output_chars=max_output_chars,
            function=function,
            source=source,
            _validator=pydantic.TypeAdapter(model),
            _context_param=context_param,
        )

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)

    # -- calling --------------------------------------------------------------------------
    def validate(self, arguments: str) -> dict[str, Any]:
        """Parse and check the model's arguments; raises ``ToolRetry`` saying what is wrong."""
        try:
            value = json.loads(arguments or "{}")
        except json.JSONDecodeError as e:
            raise ToolRetry(f"the arguments are not valid JSON ({e.msg} at {e.pos})") from None
        if not isinstance(value, dict):
            raise ToolRetry("the arguments must be a JSON object")
        if self._validator is None:
            return value
        try:
            checked = self._validator.validate_python(value)
        except pydantic.ValidationError as e:
            raise ToolRetry(_describe(e)) from None
        return {k: getattr(checked, k) for k in type(checked).model_fields}

    async def invoke(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Run the tool on validated arguments (subclasses replace this)."""
        if self.function is None:
            raise NotImplementedError(f"{type(self).__name__} {self.name!r} has no function")
        kwargs = dict(arguments)
        if self._context_param:
            kwargs[self._context_param] = context
        if inspect.iscoroutinefunction(self.function):
            return await self.function(**kwargs)
        loop = asyncio.get_running_loop()
        call = functools.partial(_guarded, self.function, kwargs)
        result = await loop.run_in_executor(_POOL, call)
        if inspect.isawaitable(result):
            return await result
        return result

    async def call(self, arguments: str, context: ToolContext) -> ToolOutput:
        """Validate, run under the timeout, and render the result. Never raises for the tool's
        own failures: they become an error result the model reads."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            args = self.validate(arguments)
            async with asyncio.timeout(self.timeout_s):
                value = await self.invoke(args, context)
            content, is_error = render(value), False
        except ToolRetry as e:
            content, is_error = f"Invalid call to {self.name}: {e}. Fix it and retry.", True
        except TimeoutError:
            content, is_error = f"{self.name} timed out after {self.timeout_s:g} s", True
        except _Unserialisable as e:
            content, is_error = f"{self.name} returned {e}, which cannot be shown as text", True
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the turn is being cancelled: not the tool's failure
            content, is_error = f"{self.name} failed: it was cancelled inside", True
        except (Exception, SystemExit, KeyboardInterrupt) as e:  # the tool's own failure
            content, is_error = f"{self.name} failed: {type(e).__name__}: {e}", True
        ms = round((loop.time() - start) * 1000, 3)
        text, truncated = truncate(content, self.max_output_chars)
        return ToolOutput(text, is_error=is_error, truncated=truncated, ms=ms)


class _Exited(Exception):  # carries a sync tool's SystemExit out of its thread
    pass


def _guarded(function: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """Run a sync tool in a worker thread; ``sys.exit()`` in it ends the call, not the
    process."""
    try:
        return function(**kwargs)
    except (SystemExit, KeyboardInterrupt) as e:
        raise _Exited(f"{type(e).__name__}({e})") from None


# -- the decorator ------------------------------------------------------------------------
@overload
def tool(function: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    side_effects: bool = False,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
) -> Callable[[Callable[..., Any]], Tool]: ...
def tool(
    function: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    side_effects: bool = False,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a :class:`Tool` of a typed function, sync or async.

    >>> @tool
    ... def add(a: int, b: int) -> int:
    ...     '''Add two numbers.'''
    ...     return a + b
    >>> add.parameters["required"]
    ['a', 'b']

    Declare ``side_effects=True`` for a tool that changes anything (sends, writes, buys): such a
    call runs only once the user approves it, unless the configuration allows it.
    """

    def make(fn: Callable[..., Any]) -> Tool:
        return Tool.from_function(
            fn,
            name=name,
            description=description,
            side_effects=side_effects,
            timeout_s=timeout_s,
            max_output_chars=max_output_chars,
        )

    return make(function) if function is not None else make


# -- schema -------------------------------------------------------------------------------
def _parse_docstring(function: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    doc = inspect.getdoc(function) or ""
    if not doc:
        return "", {}
    import docstring_parser

    parsed = docstring_parser.parse(doc)
    short, long = parsed.short_description or "", parsed.long_description or ""
    # A summary wrapped over several lines is parsed as short + long: join it back.
    glue = " " if short and long and not short.rstrip().endswith((".", "!", "?", ":")) else "\n\n"
    summary = glue.join(p for p in (short, long) if p)
    params = {p.arg_name: p.description or "" for p in parsed.params}
    return summary.strip(), params


def _fields(
    function: Callable[..., Any], docs: dict[str, str]
) -> tuple[dict[str, Any], str | None]:
    try:
        hints = get_type_hints(function, include_extras=True)
    except Exception as e:
        raise ConfigError(
            f"cannot read the type hints of tool {function.__name__!r}: {e}",
            hint="annotate every parameter with a type that can be imported",
        ) from None
    fields: dict[str, Any] = {}
    context_param = None
    for param in inspect.signature(function).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigError(
                f"tool {function.__name__!r} takes *{param.name}",
                hint="tools take named parameters only, so the model knows what to send",
            )
        hint = hints.get(param.name, Any)
        if _mentions_context(hint):
            if _unwrap(hint) is not ToolContext:
                raise ConfigError(
                    f"tool {function.__name__!r}: type {param.name!r} as plain ToolContext",
                    hint="an optional or combined ToolContext would let the model send one",
                )
            context_param = param.name
            continue
        default = ... if param.default is param.empty else param.default
        info = pydantic.Field(default, description=docs.get(param.name) or None)
        fields[param.name] = (hint, info)
    return fields, context_param


def _unwrap(hint: Any) -> Any:
    while get_origin(hint) is Annotated:
        hint = get_args(hint)[0]
    return hint


def _mentions_context(hint: Any) -> bool:
    """Whether ``hint`` is or contains ToolContext (``ToolContext | None``, ``Annotated``)."""
    hint = _unwrap(hint)
    if hint is ToolContext:
        return True
    return any(_mentions_context(arg) for arg in get_args(hint))


def _clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop pydantic's generated titles: noise in every prompt."""

    def walk(node: Any, in_properties: bool = False) -> Any:
        if isinstance(node, dict):
            return {
                k: walk(v, k == "properties")
                for k, v in node.items()
                if not (k == "title" and not in_properties and isinstance(v, str))
            }
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    cleaned = walk(schema)
    cleaned.setdefault("properties", {})
    return cleaned


def _describe(error: pydantic.ValidationError) -> str:
    problems = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "arguments"
        problems.append(f"{where}: {item['msg']}")
    return "; ".join(problems)


# -- output -------------------------------------------------------------------------------
class _Unserialisable(Exception):
    pass


def render(value: Any) -> str:
    """A tool's return value as text: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return "(no output)"
    try:
        return pydantic_core.to_json(value).decode("utf-8", "surrogatepass")
    except (pydantic_core.PydanticSerializationError, TypeError, ValueError):
        raise _Unserialisable(f"a {type(value).__name__}") from None


def truncate(text: str, limit: int) -> tuple[str, bool]:
    """``text`` cut to ``limit`` characters, with a note saying how much was left out."""
    if len(text) <= limit:
        return text, False
    note = f"\n[output truncated: showing {limit:,} of {len(text):,} characters]"
    return text[:limit] + note, True
