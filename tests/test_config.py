"""Settings: defaults < chatwright.toml < CHATWRIGHT_* env vars < explicit overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatwright.config import Settings, load_settings
from chatwright.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults(tmp_path: Path) -> None:
    s = load_settings()
    assert s.model == "local:gemma-3-270m"
    assert s.user == "local"
    assert s.max_message_chars == 32_000
    assert s.history_messages == 40
    assert s.model_timeout_s == 300.0
    assert s.store_traces is True
    assert s.openai.base_url is None
    assert s.data_dir == tmp_path / "xdg" / "chatwright"  # XDG_DATA_HOME set by conftest
    assert s.db_path == s.data_dir / "chatwright.db"


def test_values_from_local_toml_file(tmp_path: Path) -> None:
    write(
        tmp_path / "chatwright.toml",
        'model = "test:echo"\nhistory_messages = 4\n[openai]\nbase_url = "http://file/v1"\n',
    )
    s = load_settings()
    assert s.model == "test:echo"
    assert s.history_messages == 4
    assert s.openai.base_url == "http://file/v1"


def test_explicit_config_file(tmp_path: Path) -> None:
    path = write(tmp_path / "elsewhere.toml", 'user = "alice"\n')
    assert load_settings(path).user == "alice"


def test_config_file_named_by_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "named.toml", 'user = "bob"\n')
    monkeypatch.setenv("CHATWRIGHT_CONFIG", str(path))
    assert load_settings().user == "bob"


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "chatwright.toml", 'model = "test:echo"\nuser = "file-user"\n')
    monkeypatch.setenv("CHATWRIGHT_MODEL", "test:context")
    s = load_settings()
    assert s.model == "test:context"
    assert s.user == "file-user"


def test_nested_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATWRIGHT_OPENAI__BASE_URL", "http://env/v1")
    assert load_settings().openai.base_url == "http://env/v1"


def test_nested_env_var_merges_with_file_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "chatwright.toml", '[openai]\nbase_url = "http://file"\napi_key = "k"\n')
    monkeypatch.setenv("CHATWRIGHT_OPENAI__BASE_URL", "http://env")
    s = load_settings()
    assert s.openai.base_url == "http://env"
    assert s.openai.api_key == "k"


def test_explicit_overrides_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "chatwright.toml", 'model = "test:echo"\n')
    monkeypatch.setenv("CHATWRIGHT_MODEL", "test:context")
    assert load_settings(model="openai:gpt-4o").model == "openai:gpt-4o"


def test_none_overrides_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATWRIGHT_MODEL", "test:context")
    assert load_settings(model=None).model == "test:context"


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "chatwright.toml", 'model = "unterminated\n')
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(path.name) in str(info.value)
    assert "not valid TOML" in str(info.value)


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('model = "test:echo"\n# café\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(path) in str(info.value) and "not UTF-8" in str(info.value)
    assert "line 2" in str(info.value) and "UTF-8" in (info.value.hint or "")


def test_a_byte_order_mark_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes('model = "test:echo"\n# café\n'.encode("utf-8-sig"))
    assert load_settings(path).model == "test:echo"


def test_unknown_key_is_an_unknown_setting(tmp_path: Path) -> None:
    write(tmp_path / "chatwright.toml", "modle = 'test:echo'\n")
    with pytest.raises(ConfigError, match="modle: unknown setting"):
        load_settings()


def test_unknown_nested_key_is_an_unknown_setting(tmp_path: Path) -> None:
    write(tmp_path / "chatwright.toml", "[openai]\nbase_ur = 'x'\n")
    with pytest.raises(ConfigError, match=r"openai\.base_ur: unknown setting"):
        load_settings()


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ("max_message_chars = -1\n", "max_message_chars"),
        ('model = "nocolon"\n', "model"),
        ("history_messages = 'many'\n", "history_messages"),
        ("model_timeout_s = 0\n", "model_timeout_s"),
    ],
)
def test_bad_value_in_file(tmp_path: Path, toml: str, field: str) -> None:
    path = write(tmp_path / "chatwright.toml", toml)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert field in str(info.value)
    assert str(path.name) in str(info.value)


def test_bad_value_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATWRIGHT_MAX_MESSAGE_CHARS", "-1")
    with pytest.raises(ConfigError, match="max_message_chars"):
        load_settings()


def test_bad_override() -> None:
    with pytest.raises(ConfigError, match="model"):
        load_settings(model="nocolon")


def test_missing_explicit_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")


def test_missing_config_file_named_by_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATWRIGHT_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        load_settings()


def test_file_values_do_not_leak_into_later_settings(tmp_path: Path) -> None:
    write(tmp_path / "chatwright.toml", 'user = "from-file"\n')
    assert load_settings().user == "from-file"
    assert Settings().user == "local"
