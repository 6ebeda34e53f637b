"""Tool-choice evaluation: how often a model picks the right tool with valid arguments.

The dataset (``evals/tools/tasks.jsonl``) holds single-message tasks over a fixed toolset of six
tools (:data:`TOOLS`): ``{"id", "message", "expected_tool": name | null, "expected_args",
"split": "train"|"test"}``. ``null`` means no tool should be called (small talk, or a question
the model should just answer). ``expected_args`` maps a parameter to a value (strings compare
case-insensitively, numbers numerically), ``{"contains": text | [texts]}`` or
``{"any_of": [values]}``; parameters it leaves out are not checked.

Each task is one request, as a bot with these tools would send it: the default system prompt
with the tool-data rule, the user's message, and the specs of all six tools. The first tool call
the model streams (or none) is scored:

- ``tool_correct``: the expected tool, or correctly no call;
- ``args_valid``: the arguments pass the tool's own validation (:meth:`Tool.validate`);
- ``args_correct``: valid, and every ``expected_args`` matcher holds;
- ``right``, the headline figure: right tool with valid arguments (no-tool tasks: no call).

``python -m chatwright.evals.tools [TASKS] [--model local:gemma-3-270m] [--split test] [--json]``
prints the figures overall and per split, for tool and no-tool tasks apart, with the median time
per task. The split keeps prompt tuning (``train``) apart from the figures reported (``test``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from chatwright.agent import TOOL_DATA_RULE
from chatwright.config import Settings
from chatwright.errors import ModelResponseError
from chatwright.models.base import Model, ModelRequest, ModelSettings
from chatwright.tools.base import Tool, ToolRetry
from chatwright.types import Message, TextDelta, ToolCallEvent, ToolCallPart

__all__ = [
    "DEFAULT_PATH",
    "TOOLS",
    "TaskResult",
    "ToolEvalResult",
    "ToolTask",
    "evaluate",
    "load_tasks",
    "main",
    "matches",
    "request_for",
    "run_task",
    "run_tool_eval",
    "score",
    "system_prompt",
]

DEFAULT_PATH = Path(__file__).resolve().parents[3] / "evals" / "tools" / "tasks.jsonl"
SPLITS = ("train", "test")
#: Text after the tool decision does not matter here; this bounds the time spent on it.
MAX_TOKENS = 64


# -- the toolset --------------------------------------------------------------------------
def get_weather(city: str, unit: Literal["c", "f"] = "c") -> str:
    """Get the current weather for a city.

    Args:
        city: The city name, e.g. "Paris".
        unit: Temperature unit: "c" for Celsius or "f" for Fahrenheit.
    """
    return f"12 degrees {unit.upper()} and cloudy in {city}"


def convert_currency(amount: float, from_currency: str, to_currency: str) -> str:
    """Convert an amount of money from one currency to another.

    Args:
        amount: The amount of money to convert.
        from_currency: The currency to convert from, as an ISO code, e.g. "USD".
        to_currency: The currency to convert to, as an ISO code, e.g. "EUR".
    """
    return f"{amount} {from_currency} = {amount * 0.9:.2f} {to_currency}"


def create_reminder(text: str, when: str) -> str:
    """Create a reminder for the user.

    Args:
        text: What to remind the user about.
        when: When to remind them, e.g. "tomorrow at 9am".
    """
    return f"Reminder set for {when}: {text}"


def search_knowledge(query: str) -> str:
    """Search the company knowledge base: policies, handbooks, product documentation.

    Args:
        query: What to search for.
    """
    return f"No documents found for {query!r}"


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression and return the exact result.

    Args:
        expression: The arithmetic expression, e.g. "(3 + 4) * 2".
    """
    return "42"


def send_email(to: str, subject: str, body: str) -> str:
    """Send an email on the user's behalf.

    Args:
        to: The recipient's email address.
        subject: The subject line.
        body: The text of the email.
    """
    return f"Email sent to {to}"


TOOLS: tuple[Tool, ...] = (
    Tool.from_function(get_weather),
    Tool.from_function(convert_currency),
    Tool.from_function(create_reminder, side_effects=True),
    Tool.from_function(search_knowledge),
    Tool.from_function(calculate),
    Tool.from_function(send_email, side_effects=True),
)
_BY_NAME = {t.name: t for t in TOOLS}


def system_prompt() -> str:
    """The system prompt a bot with tools sends: the default prompt and the tool-data rule."""
    default = Settings.model_fields["system_prompt"].default
    return f"{default}\n\n{TOOL_DATA_RULE}".strip()


# -- the dataset --------------------------------------------------------------------------
@dataclass(frozen=True)
class ToolTask:
    id: str
    message: str
    expected_tool: str | None
    expected_args: dict[str, Any] = field(default_factory=dict)
    split: str = "test"


def load_tasks(path: str | Path = DEFAULT_PATH, split: str | None = None) -> list[ToolTask]:
    """The tasks of ``path`` (all, or one split), checked against :data:`TOOLS`."""
    tasks: list[ToolTask] = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        task = ToolTask(
            id=str(row["id"]),
            message=row["message"],
            expected_tool=row.get("expected_tool"),
            expected_args=dict(row.get("expected_args") or {}),
            split=row.get("split", "test"),
        )
        _check(task, number)
        tasks.append(task)
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: task ids are not unique")
    return [t for t in tasks if split in (None, "all") or t.split == split]


def _check(task: ToolTask, number: int) -> None:
    where = f"line {number} ({task.id})"
    if task.split not in SPLITS:
        raise ValueError(f"{where}: split must be one of {SPLITS}, not {task.split!r}")
    if task.expected_tool is None:
        if task.expected_args:
            raise ValueError(f"{where}: a no-tool task cannot expect arguments")
        return
    if task.expected_tool not in _BY_NAME:
        raise ValueError(f"{where}: unknown tool {task.expected_tool!r}")
    known = set(_BY_NAME[task.expected_tool].parameters.get("properties", {}))
    unknown = set(task.expected_args) - known
    if unknown:
        raise ValueError(f"{where}: {task.expected_tool} has no parameter {sorted(unknown)}")


# -- scoring ------------------------------------------------------------------------------
def _equal(actual: Any, expected: Any) -> bool:
    if isinstance(expected, str):
        return isinstance(actual, str) and actual.strip().casefold() == expected.casefold()
    if isinstance(expected, bool) or isinstance(actual, bool):
        return actual is expected
    if isinstance(expected, int | float):
        return isinstance(actual, int | float) and abs(actual - expected) < 1e-9
    return bool(actual == expected)


def matches(actual: Any, expected: Any) -> bool:
    """Whether an argument value satisfies an ``expected_args`` matcher."""
    if isinstance(expected, dict) and "contains" in expected:
        wanted = expected["contains"]
        needles = [wanted] if isinstance(wanted, str) else list(wanted)
        text = actual if isinstance(actual, str) else json.dumps(actual)
        return all(n.casefold() in text.casefold() for n in needles)
    if isinstance(expected, dict) and "any_of" in expected:
        return any(_equal(actual, option) for option in expected["any_of"])
    return _equal(actual, expected)


@dataclass(frozen=True)
class TaskResult:
    """How a model did on one task."""

    id: str
    split: str
    expected_tool: str | None
    called_tool: str | None
    arguments: str | None
    tool_correct: bool
    args_valid: bool
    args_correct: bool
    ms: float = 0.0  # until the first tool call, or the end of the (bounded) answer
    first_ms: float = 0.0  # until the model's first output: a tool call or answer text
    problem: str | None = None  # why the arguments are invalid, or the model's error

    @property
    def right(self) -> bool:
        """Right tool with valid arguments; for a no-tool task: no call."""
        return self.tool_correct and self.args_valid


def score(
    task: ToolTask,
    call: ToolCallPart | None,
    ms: float = 0.0,
    error: str | None = None,
    first_ms: float | None = None,
) -> TaskResult:
    """Score the first tool call a model made for ``task`` (``None``: it called none)."""
    base: dict[str, Any] = {
        "id": task.id,
        "split": task.split,
        "expected_tool": task.expected_tool,
        "called_tool": call.name if call else None,
        "arguments": call.arguments if call else None,
        "ms": round(ms, 1),
        "first_ms": round(ms if first_ms is None else first_ms, 1),
    }
    if error is not None:  # the model failed: nothing it did counts
        return TaskResult(
            **base, tool_correct=False, args_valid=False, args_correct=False, problem=error
        )
    if call is None:
        ok = task.expected_tool is None
        return TaskResult(**base, tool_correct=ok, args_valid=ok, args_correct=ok)
    tool = _BY_NAME.get(call.name)
    if tool is None:
        return TaskResult(
            **base,
            tool_correct=False,
            args_valid=False,
            args_correct=False,
            problem=f"unknown tool {call.name!r}",
        )
    try:
        args = tool.validate(call.arguments)
    except ToolRetry as e:
        return TaskResult(
            **base,
            tool_correct=call.name == task.expected_tool,
            args_valid=False,
            args_correct=False,
            problem=str(e),
        )
    tool_correct = call.name == task.expected_tool
    correct = tool_correct and all(
        name in args and matches(args[name], expected)
        for name, expected in task.expected_args.items()
    )
    return TaskResult(**base, tool_correct=tool_correct, args_valid=True, args_correct=correct)


# -- running ------------------------------------------------------------------------------
def request_for(task: ToolTask, tools: Sequence[Tool] = TOOLS) -> ModelRequest:
    """The request a bot with ``tools`` would send for the task's message."""
    return ModelRequest(
        messages=(Message.system(system_prompt()), Message.user(task.message)),
        tools=tuple(t.spec for t in tools),
        settings=ModelSettings(max_tokens=MAX_TOKENS, temperature=0.0),
    )


async def run_task(model: Model, task: ToolTask) -> TaskResult:
    """Stream the model on one task until its first tool call or its end, and score it."""
    call: ToolCallPart | None = None
    error: str | None = None
    first: float | None = None
    stream: Any = None
    start = time.perf_counter()
    try:
        stream = model.stream(request_for(task))
        async for event in stream:
            if first is None and isinstance(event, ToolCallEvent | TextDelta):
                first = (time.perf_counter() - start) * 1000
            if isinstance(event, ToolCallEvent):
                call = event.call
                break
    except ModelResponseError as e:  # a bad reply counts against the model; others raise
        error = f"{type(e).__name__}: {e}"
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()
    ms = (time.perf_counter() - start) * 1000
    return score(task, call, ms, error, first)


@dataclass(frozen=True)
class ToolEvalResult:
    """Per-task results of one model on a task set, and their summary."""

    model: str
    split: str | None
    results: tuple[TaskResult, ...]

    def group(self, split: str | None = None) -> dict[str, Any]:
        """Figures for one split (``None``: every task evaluated)."""
        rows = [r for r in self.results if split is None or r.split == split]
        tool = [r for r in rows if r.expected_tool is not None]
        none = [r for r in rows if r.expected_tool is None]

        def rate(hits: int, n: int) -> float | None:
            return hits / n if n else None

        times = [r.ms for r in rows]
        firsts = [r.first_ms for r in rows]
        return {
            "n": len(rows),
            "right": sum(r.right for r in rows),
            "right_rate": rate(sum(r.right for r in rows), len(rows)),
            "tool_tasks": {
                "n": len(tool),
                "right_tool": sum(r.tool_correct for r in tool),
                "right_tool_valid_args": sum(r.right for r in tool),
                "right_tool_correct_args": sum(r.args_correct for r in tool),
                "rate": rate(sum(r.right for r in tool), len(tool)),
                "correct_args_rate": rate(sum(r.args_correct for r in tool), len(tool)),
            },
            "no_tool_tasks": {
                "n": len(none),
                "no_call": sum(r.right for r in none),
                "rate": rate(sum(r.right for r in none), len(none)),
            },
            "p50_ms": round(statistics.median(times), 1) if times else 0.0,
            "p50_first_ms": round(statistics.median(firsts), 1) if firsts else 0.0,
        }

    def summary(self) -> dict[str, Any]:
        splits = sorted({r.split for r in self.results}, key=SPLITS.index)
        out = {"model": self.model, "split": self.split or "all", "all": self.group()}
        if len(splits) > 1:
            out.update({s: self.group(s) for s in splits})
        return out

    @property
    def rate(self) -> float:
        """The headline figure: right tool with valid arguments, over every task evaluated."""
        return self.group()["right_rate"] or 0.0


async def evaluate(model: Model, tasks: Sequence[ToolTask]) -> ToolEvalResult:
    """Run ``model`` on every task, one at a time (the timings are per task)."""
    results = [await run_task(model, task) for task in tasks]
    return ToolEvalResult(model=model.name, split=None, results=tuple(results))


def run_tool_eval(
    path: str | Path = DEFAULT_PATH,
    model_name: str | Model = "local:gemma-3-270m",
    split: str | None = None,
) -> ToolEvalResult:
    """Evaluate a model (a chatwright model name, or a model object) on the tasks of ``path``."""
    if isinstance(model_name, str):
        from chatwright.models import get_model

        model = get_model(model_name)
    else:
        model = model_name
    tasks = load_tasks(path, split)
    result = asyncio.run(evaluate(model, tasks))
    return ToolEvalResult(
        model=result.model, split=None if split in (None, "all") else split, results=result.results
    )


# -- the command --------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def render_table(result: ToolEvalResult) -> list[str]:
    summary = result.summary()
    lines = [
        f"model={summary['model']} split={summary['split']}",
        f"{'group':<7}{'n':>4}{'right':>9}{'tool tasks':>20}{'correct args':>14}"
        f"{'no-tool':>14}{'p50 ms':>9}{'p50 first':>11}",
    ]
    for name in ("all", *SPLITS):
        if name not in summary:
            continue
        g = summary[name]
        t, z = g["tool_tasks"], g["no_tool_tasks"]
        tool = f"{t['right_tool_valid_args']}/{t['n']} {_pct(t['rate'])}"
        none = f"{z['no_call']}/{z['n']} {_pct(z['rate'])}"
        lines.append(
            f"{name:<7}{g['n']:>4}{_pct(g['right_rate']):>9}{tool:>20}"
            f"{_pct(t['correct_args_rate']):>14}{none:>14}{g['p50_ms']:>9.0f}"
            f"{g['p50_first_ms']:>11.0f}"
        )
    lines.append(
        "right = right tool with valid arguments (no-tool tasks: no call); tool tasks: right/n; "
        f"no-tool: no call/n; ms: to the tool call or the answer's end ({MAX_TOKENS} tokens at "
        "most); first: to the first tool call or answer text"
    )
    return lines


def main(argv: Sequence[str] | None = None, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(prog="python -m chatwright.evals.tools")
    parser.add_argument("tasks", nargs="?", default=str(DEFAULT_PATH))
    parser.add_argument("--model", default="local:gemma-3-270m")
    parser.add_argument("--split", default="all", choices=["train", "test", "all"])
    parser.add_argument("--errors", action="store_true", help="print the tasks it got wrong")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run_tool_eval(args.tasks, args.model, args.split)
    wrong = [asdict(r) for r in result.results if not (r.right and r.args_correct)]
    if args.json:
        payload = result.summary()
        payload["tasks"] = [{**asdict(r), "right": r.right} for r in result.results]
        out(json.dumps(payload, indent=2))
        return 0
    for line in render_table(result):
        out(line)
    if args.errors:
        for row in wrong:
            out(json.dumps(row, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
