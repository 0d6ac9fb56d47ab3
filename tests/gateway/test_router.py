"""Alias resolution: targets, fallbacks, and which options are enforced or only defaults."""

from __future__ import annotations

from pathlib import Path

from hearth.gateway.router import Router
from hearth.settings import load_settings

CONFIG = """
aliases:
  healthrag:
    model: llama3.1:8b
    options: {num_ctx: 8192, temperature: 0.2}
    keep_alive: 30m
    fallbacks: [small, gpt-4o-mini]
  small: {model: 'llama3.2:3b', fallbacks: [healthrag]}
models:
  llama3.1:8b: {options: {num_ctx: 4096, top_p: 0.9}}
"""


def router(tmp_path: Path) -> Router:
    p = tmp_path / "h.yaml"
    p.write_text(CONFIG)
    return Router(load_settings(p, env={}))


def test_a_real_model_name_is_its_own_single_target(tmp_path: Path) -> None:
    targets = router(tmp_path).targets("phi4:14b")
    assert [t.model for t in targets] == ["phi4:14b"]
    assert not targets[0].changes_request


def test_an_alias_expands_to_its_model_then_fallbacks_without_cycles(tmp_path: Path) -> None:
    targets = router(tmp_path).targets("healthrag")
    assert [(t.model, t.alias) for t in targets] == [
        ("llama3.1:8b", "healthrag"),
        ("llama3.2:3b", "small"),
        ("gpt-4o-mini", None),
    ]


def test_runner_options_are_enforced_over_the_clients(tmp_path: Path) -> None:
    t = router(tmp_path).targets("healthrag")[0]
    assert t.options({"num_ctx": 2048, "temperature": 0.9})["num_ctx"] == 8192


def test_sampling_options_are_defaults_the_client_may_override(tmp_path: Path) -> None:
    t = router(tmp_path).targets("healthrag")[0]
    assert t.options({"temperature": 0.9})["temperature"] == 0.9
    assert t.options({})["temperature"] == 0.2


def test_alias_options_win_over_per_model_options_and_both_apply(tmp_path: Path) -> None:
    t = router(tmp_path).targets("healthrag")[0]
    assert t.options(None) == {"num_ctx": 8192, "temperature": 0.2, "top_p": 0.9}
    assert t.keep_alive == "30m"


def test_per_model_options_apply_to_clients_using_the_real_name(tmp_path: Path) -> None:
    t = router(tmp_path).targets("llama3.1:8b")[0]
    assert t.options({"num_ctx": 32768}) == {"num_ctx": 4096, "top_p": 0.9}
