"""The command line, run as a user would: real processes on a real data directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatwright import SQLiteStore

CLI = [sys.executable, "-m", "chatwright"]


def run(data: Path, *args: str, stdin: str | None = None, ok: bool = True):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATWRIGHT_")}
    env["CHATWRIGHT_DATA_DIR"] = str(data)
    proc = subprocess.run(
        [*CLI, *args], input=stdin, capture_output=True, text=True, env=env, timeout=60
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def stored(data: Path, thread: str, owner: str = "local"):
    store = SQLiteStore(data / "chatwright.db")
    try:
        return [m.message for m in store.messages(owner, thread)]
    finally:
        store.close()


def test_ask_answers_and_keeps_the_thread_across_processes(tmp_path):
    assert run(tmp_path, "ask", "-m", "test:echo", "--thread", "t", "hello").stdout == (
        "echo: hello\n"
    )
    run(tmp_path, "ask", "-m", "test:echo", "--thread", "t", "again")
    assert [m.text for m in stored(tmp_path, "t")] == [
        "hello",
        "echo: hello",
        "again",
        "echo: again",
    ]


def test_ask_in_a_shell_loop_holds_a_50_turn_thread(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATWRIGHT_")}
    env |= {"CHATWRIGHT_DATA_DIR": str(tmp_path), "CHATWRIGHT_MODEL": "test:echo"}
    script = (
        f'for i in $(seq 1 49); do "{sys.executable}" -m chatwright ask --thread loop '
        '"turn $i" > /dev/null || exit 1; done; '
        f'"{sys.executable}" -m chatwright ask -m test:context --thread loop "turn 50"'
        " > out_50.json"
    )
    subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, check=True, timeout=300)
    messages = stored(tmp_path, "loop")
    assert len(messages) == 100
    assert [m.role for m in messages] == ["user", "assistant"] * 50
    assert [m.text for m in messages[::2]] == [f"turn {i}" for i in range(1, 51)]
    last_seen = json.loads((tmp_path / "out_50.json").read_text())["messages"]
    assert last_seen[-1]["parts"][0]["text"] == "turn 50"
    assert last_seen[-3]["parts"][0]["text"] == "turn 49"  # the history came along


def test_ask_json_and_stdin(tmp_path):
    proc = run(tmp_path, "ask", "-m", "test:echo", "--json", "-", stdin="from stdin")
    payload = json.loads(proc.stdout)
    assert payload["answer"] == "echo: from stdin"
    assert [s["name"] for s in payload["trace"]["stages"]][:2] == ["load", "rewrite"]


def test_ask_without_thread_prints_the_new_thread_id(tmp_path):
    proc = run(tmp_path, "ask", "-m", "test:echo", "hi")
    thread_id = proc.stderr.split("thread:")[1].strip()
    assert stored(tmp_path, thread_id)[0].text == "hi"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["ask", "-m", "test:echo", "   "], 2, "the message is empty"),
        (["ask", "-m", "nocolon", "x"], 2, "must be 'provider:model'"),
        (["ask", "-m", "nosuch:model", "x"], 2, "unknown model provider"),
        (["threads", "show", "nope"], 2, "thread 'nope' not found"),
        (["threads", "delete", "nope", "--yes"], 2, "thread 'nope' not found"),
        (["threads", "export", "nope"], 2, "thread 'nope' not found"),
    ],
)
def test_bad_input_is_a_clear_message_not_a_traceback(tmp_path, args, code, message):
    proc = run(tmp_path, *args, ok=False)
    assert proc.returncode == code
    assert message in proc.stderr
    assert "hint:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_oversized_message_is_refused_and_nothing_is_stored(tmp_path):
    run(tmp_path, "ask", "-m", "test:echo", "--thread", "t", "first")
    env_big = "x" * 40_000
    proc = run(tmp_path, "ask", "-m", "test:echo", "--thread", "t", "-", stdin=env_big, ok=False)
    assert proc.returncode == 2 and "over the limit" in proc.stderr
    assert [m.text for m in stored(tmp_path, "t")] == ["first", "echo: first"]


def test_malformed_config_file_is_named(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('model = "test:echo\n')
    proc = run(tmp_path, "ask", "--config", str(config), "hi", ok=False)
    assert proc.returncode == 2
    assert "bad.toml is not valid TOML" in proc.stderr and "Traceback" not in proc.stderr


def test_unreachable_provider_is_a_clear_error_and_keeps_the_message(tmp_path):
    env_args = ["ask", "-m", "openai:gpt-x", "--thread", "t", "hello"]
    os.environ["CHATWRIGHT_OPENAI__BASE_URL"] = "http://127.0.0.1:9/v1"
    os.environ["CHATWRIGHT_OPENAI__MAX_RETRIES"] = "0"
    try:
        env = {k: v for k, v in os.environ.items()}
        env["CHATWRIGHT_DATA_DIR"] = str(tmp_path)
        proc = subprocess.run(
            [*CLI, *env_args], capture_output=True, text=True, env=env, timeout=60
        )
    finally:
        del os.environ["CHATWRIGHT_OPENAI__BASE_URL"], os.environ["CHATWRIGHT_OPENAI__MAX_RETRIES"]
    assert proc.returncode == 1, proc.stderr
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr
    assert [m.text for m in stored(tmp_path, "t")] == ["hello"]


def test_threads_list_show_export_delete(tmp_path):
    run(tmp_path, "ask", "-m", "test:echo", "--thread", "a", "alpha question")
    run(tmp_path, "ask", "-m", "test:echo", "--thread", "b", "beta question")
    listed = json.loads(run(tmp_path, "threads", "list", "--json").stdout)
    assert [t["id"] for t in listed] == ["b", "a"]
    assert listed[1]["title"] == "alpha question" and listed[1]["messages"] == 2

    shown = run(tmp_path, "threads", "show", "a", "--trace").stdout
    assert "alpha question" in shown and "echo: alpha question" in shown
    assert "trace: test:echo" in shown

    exported = json.loads(run(tmp_path, "threads", "export", "a").stdout)
    assert [m["seq"] for m in exported["messages"]] == [1, 2]
    markdown = run(tmp_path, "threads", "export", "a", "-f", "markdown").stdout
    assert markdown.startswith("# alpha question") and "## assistant · #2" in markdown

    run(tmp_path, "threads", "delete", "a", "--yes")
    assert [t["id"] for t in json.loads(run(tmp_path, "threads", "list", "--json").stdout)] == ["b"]


def test_delete_without_a_terminal_needs_yes(tmp_path):
    run(tmp_path, "ask", "-m", "test:echo", "--thread", "a", "keep me")
    proc = run(tmp_path, "threads", "delete", "a", ok=False)
    assert proc.returncode == 2 and "--yes" in proc.stderr
    assert len(stored(tmp_path, "a")) == 2


def test_users_do_not_see_each_other(tmp_path):
    run(tmp_path, "ask", "-m", "test:echo", "--user", "ada", "--thread", "x", "secret")
    proc = run(tmp_path, "threads", "show", "x", "--user", "bob", ok=False)
    assert proc.returncode == 2 and "not found" in proc.stderr
    assert json.loads(run(tmp_path, "threads", "list", "--json", "--user", "bob").stdout) == []


def test_chat_continues_a_thread_after_a_restart(tmp_path):
    first = run(tmp_path, "chat", "-m", "test:echo", "--thread", "c", stdin="hello\n/quit\n")
    assert "echo: hello" in first.stdout and "new thread" in first.stderr
    second = run(tmp_path, "chat", "-m", "test:echo", "--thread", "c", stdin="more\n")
    assert "resuming thread" in second.stderr
    assert "you> hello" in second.stdout  # recent history is shown on resume
    assert [m.text for m in stored(tmp_path, "c")] == ["hello", "echo: hello", "more", "echo: more"]


def test_ctrl_c_mid_answer_keeps_what_arrived_and_the_chat_goes_on(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATWRIGHT_")}
    env["CHATWRIGHT_DATA_DIR"] = str(tmp_path)
    proc = subprocess.Popen(
        [*CLI, "chat", "-m", "test:slow", "--thread", "i"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    long = " ".join(f"w{i}" for i in range(200))  # 10 s to stream at 50 ms a word
    proc.stdin.write(long + "\n")
    proc.stdin.flush()
    seen = ""
    deadline = time.monotonic() + 20
    while "w3" not in seen and time.monotonic() < deadline:
        seen += os.read(proc.stdout.fileno(), 100).decode()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    _stdout, stderr = proc.communicate("after\n", timeout=30)
    assert proc.returncode == 0, stderr
    assert "answer interrupted" in stderr and "Traceback" not in stderr
    messages = stored(tmp_path, "i")
    assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]
    cut = messages[1]
    assert cut.metadata["interrupted"] is True
    assert cut.text.startswith("echo: w0 w1") and len(cut.text) < len("echo: " + long)
    assert messages[3].text.startswith("echo: after")


def test_help_is_helpful(tmp_path):
    top = run(tmp_path, "--help").stdout
    for command in ("chat", "ask", "threads"):
        assert command in top
    assert "--thread" in run(tmp_path, "ask", "--help").stdout


def test_memory_commands_and_context_preview(tmp_path):
    run(tmp_path, "memory", "add", "I'm vegetarian")
    run(tmp_path, "memory", "add", "My project is Atlas")
    listed = json.loads(run(tmp_path, "memory", "list", "--json").stdout)
    assert [m["text"] for m in listed] == ["I'm vegetarian", "My project is Atlas"]
    run(tmp_path, "memory", "edit", str(listed[1]["id"]), "My project is Atlas 2")
    run(tmp_path, "memory", "delete", str(listed[0]["id"]))
    assert [m["text"] for m in json.loads(run(tmp_path, "memory", "list", "--json").stdout)] == [
        "My project is Atlas 2"
    ]
    proc = run(tmp_path, "memory", "delete", "999", ok=False)
    assert proc.returncode == 2 and "not found" in proc.stderr

    run(tmp_path, "ask", "-m", "test:echo", "--thread", "c", "hello there")
    shown = run(tmp_path, "threads", "show", "c", "--context", "-m", "test:echo")
    assert "My project is Atlas 2" in shown.stdout and "hello there" in shown.stdout
    assert "summary strategy" in shown.stderr and "tokens" in shown.stderr
    assert "(your next message)" in shown.stdout


def test_per_thread_memory_strategy_from_the_cli(tmp_path):
    run(tmp_path, "ask", "-m", "test:echo", "--thread", "w", "one")
    run(tmp_path, "threads", "memory", "w", "window")
    assert "window strategy" in run(tmp_path, "threads", "show", "w", "--context").stderr
    proc = run(tmp_path, "threads", "memory", "w", "bogus", ok=False)
    assert proc.returncode == 2 and "unknown memory strategy" in proc.stderr


def test_remember_from_inside_a_chat(tmp_path):
    run(tmp_path, "chat", "-m", "test:echo", stdin="/remember I live in Lyon\n/context\n/quit\n")
    assert [m["text"] for m in json.loads(run(tmp_path, "memory", "list", "--json").stdout)] == [
        "I live in Lyon"
    ]


def test_eval_retrieval_on_a_tiny_beir_directory(tmp_path):
    beir = tmp_path / "tiny"
    (beir / "qrels").mkdir(parents=True)
    docs = {"d1": "cats purr when happy", "d2": "dogs bark at strangers", "d3": "fish swim"}
    (beir / "corpus.jsonl").write_text(
        "\n".join(json.dumps({"_id": k, "title": "", "text": v}) for k, v in docs.items())
    )
    (beir / "queries.jsonl").write_text(
        json.dumps({"_id": "q1", "text": "why do cats purr"})
        + "\n"
        + json.dumps({"_id": "q2", "text": "barking dogs"})
    )
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    args = ["eval", "retrieval", str(beir), "--modes", "keyword", "--embedder", "none"]
    figures = json.loads(run(tmp_path, *args, "--json").stdout)
    assert figures["modes"]["keyword"]["ndcg@10"] == 1.0
    table = run(tmp_path, *args).stdout
    assert "keyword" in table and "1.0000" in table


def test_error_hints_are_plain_text_not_markup(capsys):
    import typer

    from chatwright._cliutil import handles_errors
    from chatwright.errors import ModelUnavailable

    @handles_errors()
    def fail() -> None:
        raise ModelUnavailable("no [bold]model[/]", hint='pip install "chatwright[local]"')

    with pytest.raises(typer.Exit):
        fail()
    printed = capsys.readouterr().err
    assert 'pip install "chatwright[local]"' in printed and "no [bold]model[/]" in printed


def test_a_turn_killed_mid_answer_is_marked_interrupted_at_the_next_turn(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATWRIGHT_")}
    env["CHATWRIGHT_DATA_DIR"] = str(tmp_path)
    long = " ".join(f"w{i}" for i in range(200))  # 10 s to stream at 50 ms a word
    proc = subprocess.Popen(
        [*CLI, "ask", "-m", "test:slow", "--thread", "k", long],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    seen, deadline = b"", time.monotonic() + 20
    while b"w3" not in seen and time.monotonic() < deadline:
        seen += os.read(proc.stdout.fileno(), 100)
    proc.kill()  # SIGKILL: no handler runs, the answer is never stored
    proc.communicate(timeout=30)
    assert [m.role for m in stored(tmp_path, "k")] == ["user"]

    context = json.loads(run(tmp_path, "ask", "-m", "test:context", "-t", "k", "next").stdout)
    roles = [m["role"] for m in context["messages"]]
    assert roles[-3:] == ["user", "assistant", "user"]  # never two user messages in a row
    messages = stored(tmp_path, "k")
    assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[1].text == "" and messages[1].metadata["interrupted"] is True
    assert "#2 bot> \n    (cut short)" in run(tmp_path, "threads", "show", "k").stdout
    exported = json.loads(run(tmp_path, "threads", "export", "k").stdout)["messages"][1]
    assert exported["metadata"]["interrupted"] is True
    markdown = run(tmp_path, "threads", "export", "k", "-f", "markdown").stdout
    assert "## assistant · #2" in markdown and "*(answer cut short)*" in markdown


def test_a_config_file_that_is_not_utf8_is_named(tmp_path):
    config = tmp_path / "latin1.toml"
    config.write_bytes('system_prompt = "Réponds en français"\n'.encode("latin-1"))
    proc = run(tmp_path, "threads", "list", "--config", str(config), ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "latin1.toml is not UTF-8" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["memory", "delete", "99999999999999999999"],
        ["memory", "edit", "99999999999999999999", "text"],
        ["memory", "delete", "0"],
        ["threads", "list", "--limit", "99999999999999999999"],
        ["threads", "list", "--limit", "0"],
        ["ingest", "x.md", "-C", "kb", "--max-mb", "inf"],
    ],
)
def test_numbers_out_of_range_are_refused_not_storage_errors(tmp_path, args):
    proc = run(tmp_path, *args, ok=False)
    assert proc.returncode == 2, proc.stderr
    assert "disk space" not in proc.stderr and "Traceback" not in proc.stderr
    assert "not found" in proc.stderr or "Invalid value" in proc.stderr


def test_ask_without_an_api_key_fails_and_leaves_no_thread(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATWRIGHT_", "OPENAI_"))}
    env["CHATWRIGHT_DATA_DIR"] = str(tmp_path)
    proc = subprocess.run(
        [*CLI, "ask", "-m", "openai:gpt-4o-mini", "hi"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "OPENAI_API_KEY" in proc.stderr
    assert json.loads(run(tmp_path, "threads", "list", "--json").stdout) == []
