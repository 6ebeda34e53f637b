"""Tools written for other libraries, as chatwright tools: ``Chatbot(tools=[...])`` takes them.

- **LangChain tools**: any ``langchain_core.tools.BaseTool`` (``@tool`` functions,
  ``StructuredTool``, ``BaseTool`` subclasses, sync or async). Their schema is LangChain's own
  (``convert_to_openai_tool``); LangChain validates the arguments and runs the tool
  (``ainvoke``). No import of LangChain happens unless such a tool is passed.
- **OpenAI-style tool dicts with a callable**: the ``tools=[...]`` entry of OpenAI's chat
  completions, Responses or legacy ``functions`` API, plus the function to run under
  ``"callable"``::

      {"type": "function",
       "function": {"name": "weather", "description": "...", "parameters": {...}},
       "callable": weather}                                     # chat completions
      {"type": "function", "name": "weather", "parameters": {...}, "callable": weather}
      {"name": "weather", "parameters": {...}, "callable": weather}     # legacy functions

  The function gets the model's arguments as keyword arguments (sync or async). The schema is
  checked when the tool is made and the arguments against it before each call (with the
  ``jsonschema`` package, when installed; it comes with the ``mcp`` extra).

Neither carries chatwright's ``side_effects`` flag: a tool that changes things is marked with
``from_langchain(t, side_effects=True)``, LangChain's ``metadata={"side_effects": True}``, or
``"side_effects": True`` in the dict, and then waits for approval like any other.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from chatwright.errors import ConfigError
from chatwright.tools.base import DEFAULT_TIMEOUT_S, NAME, Tool, ToolContext, ToolRetry

__all__ = ["from_langchain", "from_openai", "is_langchain_tool", "is_openai_tool"]

_DICT_KEYS = {"type", "function", "name", "description", "parameters", "strict", "callable"}
_OPTIONS = {"side_effects", "timeout_s"}
_SHAPE = (
    'write {"type": "function", "function": {"name": ..., "description": ..., '
    '"parameters": {...}}, "callable": fn}'
)


def is_langchain_tool(value: object) -> bool:
    """Whether ``value`` is a LangChain ``BaseTool`` (without importing LangChain when it is
    not loaded: nothing can be one then)."""
    import sys

    module = sys.modules.get("langchain_core.tools")
    return module is not None and isinstance(value, module.BaseTool)


def is_openai_tool(value: object) -> bool:
    """Whether ``value`` is a dict meant as an OpenAI-style tool (well formed or not)."""
    return isinstance(value, Mapping) and bool({"function", "name", "callable"} & value.keys())


@dataclass
class LangChainTool(Tool):
    """A LangChain tool, run through its own ``ainvoke`` (which validates the arguments)."""

    runnable: Any = field(default=None, repr=False)

    async def invoke(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        import pydantic

        try:
            return await self.runnable.ainvoke(arguments)
        except pydantic.ValidationError as e:  # the model's arguments: it can fix them
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}"
                for err in e.errors()[:5]
            )
            raise ToolRetry(problems) from None


def from_langchain(
    lc_tool: Any,
    *,
    name: str | None = None,
    side_effects: bool | None = None,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
) -> Tool:
    """A chatwright :class:`Tool` running the LangChain tool ``lc_tool``.

    ``side_effects`` defaults to ``lc_tool.metadata["side_effects"]`` (else False).
    """
    try:
        from langchain_core.utils.function_calling import convert_to_openai_tool
    except ImportError:
        raise ConfigError(
            "LangChain tools need langchain-core", hint="pip install langchain-core"
        ) from None
    try:
        function = convert_to_openai_tool(lc_tool)["function"]
    except Exception as e:
        raise ConfigError(
            f"cannot read the schema of LangChain tool {getattr(lc_tool, 'name', lc_tool)!r}: {e}",
            hint="give it an args_schema (a pydantic model) or type hints on its function",
        ) from None
    if side_effects is None:
        side_effects = bool((getattr(lc_tool, "metadata", None) or {}).get("side_effects"))
    tool_name = name or function["name"]
    _check_name(tool_name, "pass name=... to chatwright.tools.from_langchain(tool, name=...)")
    return LangChainTool(
        name=tool_name,
        description=function.get("description") or "",
        parameters=_object_schema(function.get("parameters"), tool_name),
        side_effects=side_effects,
        timeout_s=timeout_s,
        source="langchain",
        runnable=lc_tool,
    )


@dataclass
class SchemaTool(Tool):
    """A function with a JSON schema written by hand: arguments are checked against it."""

    _checker: Any = field(default=None, repr=False)

    def validate(self, arguments: str) -> dict[str, Any]:
        value = super().validate(arguments)
        if self._checker is not None:
            errors = sorted(self._checker.iter_errors(value), key=lambda e: list(e.path))
            if errors:
                raise ToolRetry("; ".join(_schema_problem(e) for e in errors[:5]))
        return value


def from_openai(
    spec: Mapping[str, Any],
    function: Callable[..., Any] | None = None,
    *,
    side_effects: bool | None = None,
    timeout_s: float | None = None,
) -> Tool:
    """A chatwright :class:`Tool` from an OpenAI-style tool dict (see the module's docstring)
    and the function to run (``function``, else the dict's ``"callable"``)."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{spec!r} is not a tool dict", hint=_SHAPE)
    unknown = set(spec) - _DICT_KEYS - _OPTIONS
    if unknown:
        raise ConfigError(
            f"tool dict has unknown keys: {', '.join(sorted(map(str, unknown)))}",
            hint=f"{_SHAPE}; also allowed: side_effects, timeout_s",
        )
    if spec.get("type", "function") != "function":
        raise ConfigError(
            f"tool dict of type {spec.get('type')!r}: only function tools can run here",
            hint=_SHAPE,
        )
    inner = spec.get("function")
    body: Mapping[str, Any] = inner if isinstance(inner, Mapping) else spec
    if inner is not None and not isinstance(inner, Mapping):
        raise ConfigError(
            "the tool dict's 'function' must be a dict (name, parameters)", hint=_SHAPE
        )
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError("tool dict has no 'name'", hint=_SHAPE)
    _check_name(name, "rename the function in the dict")
    run = function if function is not None else spec.get("callable")
    if run is None:
        raise ConfigError(
            f"tool dict {name!r} has no 'callable': chatwright runs the tools it offers",
            hint=f'add "callable": your_function to the dict ({_SHAPE})',
        )
    if not callable(run):
        raise ConfigError(f"tool dict {name!r}: 'callable' is not callable", hint=_SHAPE)
    description = body.get("description") or ""
    if not isinstance(description, str):
        raise ConfigError(f"tool dict {name!r}: 'description' must be a string", hint=_SHAPE)
    parameters = _object_schema(body.get("parameters"), name)
    effects = spec.get("side_effects", False) if side_effects is None else side_effects
    timeout = spec.get("timeout_s", DEFAULT_TIMEOUT_S) if timeout_s is None else timeout_s
    return SchemaTool(
        name=name,
        description=description,
        parameters=parameters,
        side_effects=bool(effects),
        timeout_s=timeout,
        function=run,
        source="openai",
        _checker=_checker(name, parameters),
    )


def _check_name(name: str, fix: str) -> None:
    if not NAME.match(name):
        raise ConfigError(
            f"invalid tool name {name!r}",
            hint=f"use 1-64 letters, digits, '_' or '-' (what every provider accepts): {fix}",
        )


def _object_schema(parameters: Any, name: str) -> dict[str, Any]:
    """The arguments' schema: a JSON object schema (none given: no arguments)."""
    if parameters is None:
        return {"type": "object", "properties": {}}
    if not isinstance(parameters, Mapping):
        raise ConfigError(
            f"tool {name!r}: 'parameters' must be a JSON schema (a dict), "
            f"not {type(parameters).__name__}",
            hint='e.g. {"type": "object", "properties": {"city": {"type": "string"}}}',
        )
    schema = dict(parameters)
    if schema.get("type", "object") != "object":
        raise ConfigError(
            f"tool {name!r}: 'parameters' must describe an object (the keyword arguments), "
            f"not {schema.get('type')!r}",
            hint='e.g. {"type": "object", "properties": {"city": {"type": "string"}}}',
        )
    try:
        json.dumps(schema)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"tool {name!r}: 'parameters' is not JSON ({e})") from None
    schema.setdefault("type", "object")
    schema.setdefault("properties", {})
    return schema


def _checker(name: str, schema: dict[str, Any]) -> Any:
    """A validator for ``schema`` (None without the jsonschema package); a malformed schema
    is refused here, when the tool is made, not when the model first calls it."""
    try:
        import jsonschema
    except ImportError:
        return None
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top)"
        raise ConfigError(
            f"tool {name!r}: 'parameters' is not a valid JSON schema at {where}: {e.message}",
            hint="see https://json-schema.org/understanding-json-schema/",
        ) from None
    return cls(schema)


def _schema_problem(error: Any) -> str:
    where = ".".join(str(p) for p in error.absolute_path)
    message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
    return f"{where}: {message}" if where else message
