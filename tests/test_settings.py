"""Settings: YAML, ${ENV} interpolation, HEARTH_* overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from hearth.cli import main
from hearth.errors import ConfigError
from hearth.settings import DEFAULT_PORT, load_settings


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "hearth.yaml"
    p.write_text(text)
    return p


def test_no_file_gives_embedded_defaults_with_a_local_ollama() -> None:
    s = load_settings(None, env={})
    assert s.server.port == DEFAULT_PORT == 11435
    assert [(b.name, b.kind, b.url) for b in s.backends] == [("local", "ollama", "http://127.0.0.1:11434")]


def test_ollama_host_sets_the_default_backend() -> None:
    s = load_settings(None, env={"OLLAMA_HOST": "10.0.0.5:11434"})
    assert s.backends[0].url == "http://10.0.0.5:11434"


def test_env_references_are_interpolated_with_defaults(tmp_path: Path) -> None:
    p = write(tmp_path, "backends:\n  - {name: a, kind: ollama, url: 'http://${HOST}:${PORT:-11434}'}\n")
    s = load_settings(p, env={"HOST": "box"})
    assert s.backends[0].url == "http://box:11434"


def test_a_missing_env_variable_is_an_error_naming_key_and_variable(tmp_path: Path) -> None:
    p = write(tmp_path, "backends:\n  - {name: a, kind: ollama, url: '${OLLAMA_URL}'}\n")
    with pytest.raises(ConfigError, match=r"backends\[0\]\.url: environment variable OLLAMA_URL is not set"):
        load_settings(p, env={})


def test_a_backend_whose_key_variable_is_unset_is_disabled_not_an_error(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "backends:\n  - {name: cloud, kind: openai, url: 'https://api.example/v1', api_key: '${OPENAI_API_KEY}'}\n",
    )
    off = load_settings(p, env={})
    assert not off.backends[0].enabled
    assert "OPENAI_API_KEY" in (off.backends[0].disabled_reason or "")
    on = load_settings(p, env={"OPENAI_API_KEY": "sk-1"})
    assert on.backends[0].enabled
    assert on.backends[0].api_key == "sk-1"


def test_hearth_env_overrides_nested_keys_and_list_items(tmp_path: Path) -> None:
    p = write(tmp_path, "backends:\n  - {name: a, kind: ollama, url: 'http://a:1'}\n")
    s = load_settings(p, env={"HEARTH_SERVER__PORT": "8080", "HEARTH_BACKENDS__0__URL": "http://b:2"})
    assert s.server.port == 8080
    assert s.backends[0].url == "http://b:2"


def test_a_wrong_type_names_the_key(tmp_path: Path) -> None:
    p = write(tmp_path, "server:\n  port: eleven\n")
    with pytest.raises(ConfigError, match=r"server\.port: Expected `int`, got `str`"):
        load_settings(p, env={})


def test_an_unknown_key_is_named(tmp_path: Path) -> None:
    p = write(tmp_path, "server:\n  prot: 1\n")
    with pytest.raises(ConfigError, match=r"server.*prot"):
        load_settings(p, env={})


def test_a_backend_needs_name_kind_and_url(tmp_path: Path) -> None:
    p = write(tmp_path, "backends:\n  - {name: a, url: 'http://a:1'}\n")
    with pytest.raises(ConfigError, match=r"backends\[0\].*kind"):
        load_settings(p, env={})


def test_an_unknown_backend_kind_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "backends:\n  - {name: a, kind: gemini, url: 'http://a:1'}\n")
    with pytest.raises(ConfigError, match=r"backends\[0\]\.kind"):
        load_settings(p, env={})


def test_hold_models_is_for_ollama_backends_only(tmp_path: Path) -> None:
    p = write(tmp_path, "backends:\n  - {name: a, kind: ollama, url: 'http://a:1', hold_models: true}\n")
    assert load_settings(p, env={}).backends[0].hold_models
    p = write(tmp_path, "backends:\n  - {name: v, kind: openai, url: 'http://v:1/v1', hold_models: true}\n")
    with pytest.raises(ConfigError, match=r"backends\[0\]\.hold_models: only for kind ollama"):
        load_settings(p, env={})


def test_duplicate_backend_names_are_refused(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "backends:\n  - {name: a, kind: ollama, url: 'http://a:1'}\n  - {name: a, kind: ollama, url: 'http://b:1'}\n",
    )
    with pytest.raises(ConfigError, match="used twice"):
        load_settings(p, env={})


def test_alias_shorthand_names_just_the_model(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "aliases:\n  coder: qwen2.5-coder:14b\n  rag: {model: 'llama3.1:8b', options: {num_ctx: 8192}}\n",
    )
    s = load_settings(p, env={})
    assert s.aliases["coder"].model == "qwen2.5-coder:14b"
    assert s.aliases["rag"].options == {"num_ctx": 8192}


def test_a_keep_alive_ollama_could_not_read_is_refused_with_its_key(tmp_path: Path) -> None:
    p = write(tmp_path, "aliases:\n  voice: {model: 'phi4:14b', keep_alive: 1h30m}\n")
    assert load_settings(p, env={}).aliases["voice"].keep_alive == "1h30m"
    p = write(tmp_path, "models:\n  'phi4:14b': {keep_alive: soon}\n")
    with pytest.raises(ConfigError, match=r"models\.phi4:14b\.keep_alive: expected seconds"):
        load_settings(p, env={})


def test_invalid_yaml_is_reported_with_the_file(tmp_path: Path) -> None:
    p = write(tmp_path, "server: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(p, env={})


def test_init_writes_an_example_that_loads(tmp_path: Path) -> None:
    target = tmp_path / "hearth.yaml"
    result = CliRunner().invoke(main, ["init", "--config", str(target)])
    assert result.exit_code == 0, result.output
    s = load_settings(target, env={})
    assert s.server.port == 11435
    assert s.backends[0].kind == "ollama"


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    target = write(tmp_path, "server: {}\n")
    result = CliRunner().invoke(main, ["init", "--config", str(target)])
    assert result.exit_code != 0
    assert "exists" in result.output


def test_check_reports_a_bad_key_without_a_traceback(tmp_path: Path) -> None:
    p = write(tmp_path, "server:\n  port: [1]\n")
    result = CliRunner().invoke(main, ["check", "--config", str(p)])
    assert result.exit_code == 1
    assert "server.port" in result.output
    assert "Traceback" not in result.output
