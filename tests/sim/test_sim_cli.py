"""`hearth sim`: the reference workload (or a given one) through both policies, as a table or JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from hearth.cli import main

SMALL = """\
name: small
seed: 3
duration_s: 900
server: {memory_gb: 16, max_loaded_models: 1}
models:
  a:1b: {size_gb: 2, tokens_per_s: 20, prompt_tokens_per_s: 200}
  b:4b: {size_gb: 4, tokens_per_s: 10, prompt_tokens_per_s: 100}
tenants:
  chat:
    priority: interactive
    max_wait_s: 60
    traffic: {kind: poisson, model: a:1b, per_hour: 60, prompt_tokens: [100, 400], output_tokens: [20, 80]}
  jobs:
    priority: batch
    traffic: {kind: poisson, model: b:4b, per_hour: 30, prompt_tokens: [500, 900], output_tokens: [50, 150]}
"""


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["sim", *args])


def run_json(*args: str) -> dict[str, Any]:
    result = run("--json", *args)
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_a_plain_run_prints_a_row_per_policy_and_the_targets() -> None:
    result = run()
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("reference-homelab-1: seed 42, ")
    assert [line.split()[0] for line in lines if line.startswith(("ollama ", "hearth "))][:2] == [
        "ollama",
        "hearth",
    ]
    start = lines.index("targets (hearth against ollama):") + 1
    labels = ["3x fewer model loads", "interactive p95 wait halved", "no tenant over its bound",
              "throughput not lower"]  # fmt: skip
    keys = ["loads_3x_fewer", "interactive_p95_halved", "no_tenant_over_bound", "throughput_not_lower"]
    compared = run_json()["compare"]
    met = compared["targets"]
    for line, label, key in zip(lines[start : start + 4], labels, keys, strict=True):
        assert line.strip().startswith(label), line
        rest = line.strip().removeprefix(label).lstrip()
        assert rest.startswith("met  " if met[key] else "not met  "), line
    # The throughput line names its two factors, from the same figures as --json.
    (done_o, done_h), (span_o, span_h) = compared["completed"], compared["makespan_s"]
    later = round(abs(span_h - span_o))
    when = "later" if span_h > span_o else "sooner"
    assert lines[start + 3].endswith(f": {done_h:g} answered against {done_o:g}, the last {later} s {when}")


def test_json_holds_both_policies_and_the_comparison() -> None:
    data = run_json()
    assert set(data) == {
        "workload",
        "seed",
        "duration_s",
        "servers",
        "mode",
        "hold_models",
        "policies",
        "compare",
    }
    assert (data["workload"], data["seed"], data["mode"]) == ("reference-homelab-1", 42, "des")
    assert [row["policy"] for row in data["policies"]] == ["ollama", "hearth"]
    for row in data["policies"]:
        assert row["requests"] == row["completed"] + row["rejected"] + row["unfinished"]
        assert {"model_loads", "interactive_wait_p95_s", "throughput_per_h", "over_bound"} <= set(row)
    assert (data["compare"]["baseline"], data["compare"]["candidate"]) == ("ollama", "hearth")
    assert set(data["compare"]["targets"]) == {
        "loads_3x_fewer",
        "interactive_p95_halved",
        "no_tenant_over_bound",
        "throughput_not_lower",
    }


def test_the_same_seed_gives_the_same_json() -> None:
    assert run("--json", "--seed", "7").stdout == run("--json", "--seed", "7").stdout


def test_seed_and_duration_override_the_files() -> None:
    full, other, short = run_json(), run_json("--seed", "7"), run_json("--duration", "900")
    assert other["seed"] == 7
    assert other["policies"][0]["requests"] != full["policies"][0]["requests"]
    assert short["duration_s"] == 900
    assert short["policies"][0]["requests"] < full["policies"][0]["requests"]


def test_a_workload_file_replaces_the_reference(tmp_path: Path) -> None:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    data = run_json("--workload", str(path))
    assert (data["workload"], data["seed"]) == ("small", 3)
    assert data["policies"][0]["requests"] == data["policies"][1]["requests"] > 0
    assert set(data["policies"][1]["max_wait_s"]) == {"chat", "jobs"}


def test_hold_models_changes_only_hearths_row() -> None:
    """Over four hours of the reference, Ollama's idle timer unloads models between voice
    sessions; held, they stay, and Hearth loads fewer. Ollama alone is the same run."""
    plain, held = run_json("--duration", "14400"), run_json("--duration", "14400", "--hold-models")
    assert (plain["hold_models"], held["hold_models"]) == (False, True)
    assert held["policies"][0] == plain["policies"][0]
    assert held["policies"][1]["model_loads"] < plain["policies"][1]["model_loads"]
    assert "Hearth holding models" in run("--hold-models").output


def test_servers_overrides_the_files_count() -> None:
    """A second box: Ollama alone no longer keeps voice turns waiting past their bound, and
    interactive requests wait less under either policy."""
    one, two = run_json(), run_json("--servers", "2")
    assert (one["servers"], two["servers"]) == (1, 2)
    over = [sum(run["policies"][0]["over_bound"].values()) for run in (one, two)]
    assert over[0] > over[1]
    for a, b in zip(one["policies"], two["policies"], strict=True):
        assert b["interactive_wait_p95_s"] < a["interactive_wait_p95_s"]
    assert "on 2 servers" in run("--servers", "2").output
    assert run("--servers", "0").exit_code == 2


def test_compute_runners_is_refused_live(tmp_path: Path) -> None:
    """The HTTP emulator runs every runner at full speed: a shared-compute workload would not be
    what it says there."""
    path = tmp_path / "shared.yaml"
    path.write_text(SMALL.replace("max_loaded_models: 1}", "max_loaded_models: 1, compute_runners: 1}"))
    assert run("--workload", str(path)).exit_code == 0
    refused = run("--workload", str(path), "--live")
    assert refused.exit_code == 2
    assert "compute_runners is modelled by the discrete-event simulator only" in refused.output


def test_a_bad_workload_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(SMALL.replace("per_hour: 60", "per_hour: lots"))
    result = run("--workload", str(path))
    assert result.exit_code == 1
    assert "invalid workload" in result.output
    assert "tenants.chat.traffic[0].per_hour" in result.output
    assert "Traceback" not in result.output


def test_a_missing_workload_file_is_a_clear_error(tmp_path: Path) -> None:
    result = run("--workload", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 1
    assert "cannot read workload file" in result.output


def test_speed_without_live_is_a_usage_error() -> None:
    result = run("--speed", "50")
    assert result.exit_code == 2
    assert "--speed applies only with --live" in result.output


def test_floor_adds_the_fewest_loads_any_scheduler_could_make(tmp_path: Path) -> None:
    """SMALL holds one model at a time and its batch tenant has no bound: the floor is solved
    to optimality, and it is never above either policy's loads (Hearth meets every bound)."""
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    data = run_json("--workload", str(path), "--floor", "30")
    floor = data["loads_floor"]
    assert floor["optimal"] and floor["feasible"] and floor["bound"] == floor["loads"]
    hearth = data["policies"][1]
    assert not any(hearth["over_bound"].values())
    assert 2 <= floor["bound"] <= hearth["model_loads"]
    stays = floor["plan"]["ollama-1"]
    assert set(stays) == {"a:1b", "b:4b"}
    assert sum(len(s) for s in stays.values()) == floor["loads"]

    text = run("--workload", str(path), "--floor", "30")
    assert text.exit_code == 0, text.output
    assert f"loads floor: {floor['bound']} (proven in " in text.stdout


def test_floor_without_or_tools_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ortools", "ortools.sat", "ortools.sat.python", "ortools.sat.python.cp_model"):
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    result = run("--floor", "5", "--duration", "300")
    assert result.exit_code == 1
    assert "--floor needs OR-Tools: pip install ortools" in result.output
    assert "Traceback" not in result.output
