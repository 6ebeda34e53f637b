"""Tools from the command line: calls and results shown, approvals asked for or refused."""

from __future__ import annotations

import json
from pathlib import Path

from test_cli import run, stored

CALL = 'call remember {"fact": "Likes green tea."}'


def config(tmp_path: Path, auto_approve: list[str]) -> Path:
    path = tmp_path / "chatwright.toml"
    path.write_text(
        f'model = "test:tools"\nembedder = "test:hash"\n\n[tools]\nbuiltin = ["remember"]\n'
        f"auto_approve = {json.dumps(auto_approve)}\n"
    )
    return path


def test_ask_shows_the_call_and_its_result_and_runs_auto_approved_tools(tmp_path):
    cfg = config(tmp_path, ["remember"])
    proc = run(tmp_path, "ask", "--config", str(cfg), "--thread", "t", CALL)
    assert '→ remember({"fact": "Likes green tea."})' in proc.stdout
    assert "← Remembered (memory #1): Likes green tea." in proc.stdout
    assert "tool said: remember: Remembered" in proc.stdout
    assert "Likes green tea." in run(tmp_path, "memory", "list", "--config", str(cfg)).stdout
    shown = run(tmp_path, "threads", "show", "t", "--config", str(cfg)).stdout
    assert "→ remember(" in shown and "← Remembered" in shown


def test_side_effects_ask_first_and_without_a_terminal_the_answer_is_no(tmp_path):
    cfg = config(tmp_path, [])
    proc = run(tmp_path, "ask", "--config", str(cfg), "--thread", "t", CALL)
    assert "needs approval: remember has side effects" in proc.stdout
    assert "no terminal to ask" in proc.stderr and "--approve yes" in proc.stderr
    assert "not run: the user did not approve" in proc.stdout
    assert "Likes" not in run(tmp_path, "memory", "list", "--config", str(cfg)).stdout
    thread = stored(tmp_path, "t")
    assert [m.role for m in thread] == ["user", "assistant", "tool", "assistant"]


def test_approve_yes_runs_it(tmp_path):
    cfg = config(tmp_path, [])
    run(tmp_path, "ask", "--config", str(cfg), "--approve", "yes", CALL)
    assert "Likes green tea." in run(tmp_path, "memory", "list", "--config", str(cfg)).stdout


def test_tools_list(tmp_path):
    cfg = config(tmp_path, [])
    proc = run(tmp_path, "tools", "list", "--config", str(cfg), "--json")
    [remember] = json.loads(proc.stdout)["tools"]
    assert remember["name"] == "remember" and remember["side_effects"] is True
    assert (
        "side effects (asks first)" in run(tmp_path, "tools", "list", "--config", str(cfg)).stdout
    )


def test_tool_output_is_never_read_as_terminal_markup(tmp_path):
    cfg = config(tmp_path, ["remember"])
    call = 'call remember {"fact": "[bold red]x[/] [link=file:///etc]y[/link]"}'
    proc = run(tmp_path, "ask", "--config", str(cfg), call)
    assert "[bold red]x[/]" in proc.stdout and "\x1b" not in proc.stdout
