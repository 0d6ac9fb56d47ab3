"""The discrete-event comparison (sim/des.py): deterministic, complete, and what it shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from hearth.sim.des import simulate
from hearth.sim.report import summarize
from hearth.sim.workload import Workload, load_workload, reference_workload


@pytest.fixture(scope="module")
def reference() -> Workload:
    return reference_workload()


def test_a_run_is_deterministic(reference: Workload) -> None:
    for policy in ("ollama", "hearth"):
        a, b = simulate(reference, policy), simulate(reference, policy)
        assert a.loads == b.loads
        assert [(o.started_at, o.finished_at, o.rejected) for o in a.outcomes] == [
            (o.started_at, o.finished_at, o.rejected) for o in b.outcomes
        ]


@pytest.mark.parametrize("policy", ["ollama", "hearth"])
def test_every_request_ends_served_or_refused(reference: Workload, policy: str) -> None:
    result = simulate(reference, policy)
    assert len(result.outcomes) == len(reference.arrivals)
    for o in result.outcomes:
        if o.rejected is None:
            assert o.started_at is not None and o.finished_at is not None
            assert o.arrival.t <= o.started_at < o.finished_at
            # A request runs for exactly its service time once it has a slot.
            assert o.finished_at - o.started_at == pytest.approx(o.service_s)
        else:
            assert o.finished_at is None


def test_on_the_reference_hearth_loads_less_and_serves_interactive_requests_sooner(
    reference: Workload,
) -> None:
    rows = {
        p: summarize(p, (r := simulate(reference, p)).outcomes, r.loads, reference.tenants)
        for p in ("ollama", "hearth")
    }
    assert rows["hearth"]["model_loads"] < rows["ollama"]["model_loads"]  # type: ignore[operator]
    assert rows["hearth"]["interactive_wait_p95_s"] < rows["ollama"]["interactive_wait_p95_s"]  # type: ignore[operator]


def test_two_servers_take_the_work_of_one_overloaded_one(tmp_path: Path) -> None:
    """One server cannot hold both models at once (max 1 loaded): alone, two alternating
    tenants make it reload on every switch; through Hearth with two servers, each model stays
    on its own server."""
    text = """
name: alternating
seed: 1
duration_s: 600
server: {memory_gb: 48, max_loaded_models: 1, num_parallel: 1}
servers: 2
models:
  a: {size_gb: 5, tokens_per_s: 50, prompt_tokens_per_s: 500}
  b: {size_gb: 5, tokens_per_s: 50, prompt_tokens_per_s: 500}
tenants:
  x: {priority: interactive, traffic: {kind: poisson, model: a, per_hour: 120, prompt_tokens: [100, 200], output_tokens: [50, 100]}}
  y: {priority: interactive, traffic: {kind: poisson, model: b, per_hour: 120, prompt_tokens: [100, 200], output_tokens: [50, 100]}}
"""
    path = tmp_path / "w.yaml"
    path.write_text(text)
    wl = load_workload(path)
    hearth = simulate(wl, "hearth")
    assert all(o.rejected is None for o in hearth.outcomes)
    assert hearth.loads == 2  # each model loaded once, on a server of its own
