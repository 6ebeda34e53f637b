"""Tools from the command line: calls and results shown, approvals asked for or refused."""

from __future__ import annotations

import json
import sys
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
    assert "[tools] auto_approve" in proc.stderr
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


MCP_SERVER = Path(__file__).parent / "mcp_server.py"


def mcp_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "chatwright.toml"
    path.write_text(
        'model = "test:tools"\nembedder = "test:hash"\n\n'
        f"[mcp.demo]\ncommand = {json.dumps(sys.executable)}\n"
        f"args = [{json.dumps(str(MCP_SERVER))}]\n\n"
        '[mcp.broken]\ncommand = "/nonexistent/mcp-server"\n' + extra
    )
    return path


def test_mcp_tools_join_the_toolset_and_a_broken_server_is_reported(tmp_path):
    cfg = mcp_config(tmp_path)
    listed = run(tmp_path, "tools", "list", "--config", str(cfg), "--json").stdout
    payload = json.loads(listed)
    names = {t["name"]: t for t in payload["tools"]}
    assert "demo_add" in names and names["demo_add"]["source"] == "mcp:demo"
    assert names["demo_add"]["side_effects"] is False and names["demo_write_note"]["side_effects"]
    status = {s["name"]: s["status"] for s in payload["mcp_servers"]}
    assert status["demo"].startswith("connected") and status["broken"].startswith("failed")
    proc = run(tmp_path, "ask", "--config", str(cfg), 'call demo_add {"a": 2, "b": 40}')
    assert "← 42" in proc.stdout and "tool said: demo_add: 42" in proc.stdout
    # A side-effecting MCP tool asks first: without a terminal, it is not run.
    proc = run(tmp_path, "ask", "--config", str(cfg), 'call demo_write_note {"text": "x"}')
    assert "needs approval" in proc.stdout and "did not approve" in proc.stdout


def test_eval_tools_command_scores_a_model(tmp_path):
    proc = run(tmp_path, "eval", "tools", "--model", "test:echo", "--json")
    summary = json.loads(proc.stdout)
    assert summary["all"]["n"] == 30
    assert summary["all"]["no_tool_tasks"]["rate"] == 1.0  # echo never calls a tool
    assert summary["all"]["tool_tasks"]["rate"] == 0.0
