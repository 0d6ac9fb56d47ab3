"""The discrete-event comparison (sim/des.py): deterministic, complete, and what it shows."""

from __future__ import annotations

import dataclasses
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


def test_on_the_reference_hearth_keeps_every_bound_and_serves_interactive_requests_sooner(
    reference: Workload,
) -> None:
    """Ollama alone keeps Home Assistant's model (keep_alive -1) and makes the others queue behind
    its FIFO; Hearth starts every request within its tenant's bound. (It makes about as many
    loads as Ollama alone here: bench/README.md.)"""
    rows = {
        p: summarize(p, (r := simulate(reference, p)).outcomes, r.loads, reference.tenants)
        for p in ("ollama", "hearth")
    }
    over = {p: sum(row["over_bound"].values()) for p, row in rows.items()}  # type: ignore[attr-defined]
    assert over["hearth"] == 0 < over["ollama"]
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


PREEMPTION = """
name: preemption
seed: 1
duration_s: 600
server: {{memory_gb: 48, max_loaded_models: 1, num_parallel: 1, load_fixed_s: 2, load_gbps: 2}}
models:
  big: {{size_gb: 26, tokens_per_s: 5, prompt_tokens_per_s: 50}}
  voice: {{size_gb: 9, tokens_per_s: 10, prompt_tokens_per_s: 100}}
tenants:
  meal: {{priority: batch, max_wait_s: 600, stream: {stream}}}
  ha: {{priority: interactive, max_wait_s: 30}}
requests:
  - {{t: 0, tenant: meal, model: big, prompt_tokens: 500, output_tokens: 500}}
  - {{t: 20, tenant: ha, model: voice, prompt_tokens: 100, output_tokens: 20}}
"""


@pytest.mark.parametrize("stream", [False, True])
def test_a_voice_turn_preempts_a_long_batch_call_only_if_it_can_be_sent_again(
    tmp_path: Path, stream: bool
) -> None:
    """The meal call runs 110 s and its model leaves no room: without a stream it is stopped
    for the voice turn and run again whole; with one, the voice turn is dropped at its bound."""
    path = tmp_path / "w.yaml"
    path.write_text(PREEMPTION.format(stream=str(stream).lower()))
    wl = load_workload(path)
    result = simulate(wl, "hearth")
    meal, turn = result.outcomes
    if stream:
        assert meal.preempted == 0 and turn.rejected == "timed out"
        return
    assert meal.preempted == 1 and meal.lost_s == pytest.approx(20 - 15)  # 15 s load, 5 s of run
    assert turn.rejected is None and turn.wait_s is not None and turn.wait_s < 30
    assert meal.completed and meal.finished_at is not None
    assert meal.finished_at - meal.started_at == pytest.approx(meal.service_s)  # a whole run
    assert result.loads == 3  # big, voice, big again


IDLE_GAP = """
name: idle-gap
seed: 1
duration_s: 1000
server: {memory_gb: 48, max_loaded_models: 3, num_parallel: 1, keep_alive_s: 300}
models:
  a: {size_gb: 5, tokens_per_s: 50, prompt_tokens_per_s: 500}
tenants:
  x: {priority: interactive}
requests:
  - {t: 0, tenant: x, model: a, prompt_tokens: 100, output_tokens: 50}
  - {t: 600, tenant: x, model: a, prompt_tokens: 100, output_tokens: 50}
"""


def test_holding_models_keeps_one_loaded_past_the_servers_keep_alive(tmp_path: Path) -> None:
    """Ten idle minutes between two calls: the server's 5-minute keep_alive unloads the model in
    between, unless Hearth holds it (its calls carry keep_alive -1)."""
    path = tmp_path / "w.yaml"
    path.write_text(IDLE_GAP)
    wl = load_workload(path)
    assert simulate(wl, "hearth").loads == 2
    held = simulate(wl, "hearth", hold_models=True)
    assert held.loads == 1
    assert [o.wait_s for o in held.outcomes] == [pytest.approx(2 + 5 / 2), 0.0]  # a load, then none
    assert simulate(wl, "ollama", hold_models=True).loads == 2  # Ollama alone is not Hearth's to change


def test_a_client_s_own_keep_alive_reaches_the_server_through_either_policy(tmp_path: Path) -> None:
    """A client that sends keep_alive -1 (Home Assistant) keeps its model over the idle gap, alone
    or through Hearth, whose policy counts on it; one that sends 60 s loses it sooner, even where
    Hearth holds models (a keep_alive someone chose is theirs)."""
    path = tmp_path / "w.yaml"
    for keep_alive, loads in ((-1, 1), (60, 2)):
        path.write_text(
            IDLE_GAP.replace(
                "x: {priority: interactive}", f"x: {{priority: interactive, keep_alive_s: {keep_alive}}}"
            )
        )
        wl = load_workload(path)
        assert [simulate(wl, p).loads for p in ("ollama", "hearth")] == [loads, loads]
        assert simulate(wl, "hearth", hold_models=True).loads == loads


@pytest.mark.parametrize("servers", [1, 2])
def test_holding_models_loads_no_more_on_any_reference_trace(servers: int) -> None:
    """The unloads Ollama's idle timer made are gone; those Hearth decides stay. On the traces
    bench/sim_seeds.py runs (seeds 42 and 1-20), on one server and on two, that is never more
    loads in all, and fewer over the 21."""
    held = plain = 0
    for seed in [42, *range(1, 21)]:
        wl = dataclasses.replace(reference_workload(seed=seed), servers=servers)
        h, p = simulate(wl, "hearth", hold_models=True).loads, simulate(wl, "hearth").loads
        assert h <= p, seed
        held, plain = held + h, plain + p
    assert held < plain


SHARED = """
name: shared
seed: 1
duration_s: 100
server: {{memory_gb: 48, max_loaded_models: 2, num_parallel: 1, load_fixed_s: 0, load_gbps: 1000{extra}}}
models:
  a: {{size_gb: 1, tokens_per_s: 10, prompt_tokens_per_s: 100}}
  b: {{size_gb: 1, tokens_per_s: 10, prompt_tokens_per_s: 100}}
tenants:
  x: {{priority: interactive}}
  y: {{priority: interactive}}
requests:
  - {{t: 0, tenant: x, model: a, prompt_tokens: 100, output_tokens: 100}}
  - {{t: 0, tenant: y, model: b, prompt_tokens: 100, output_tokens: 50}}
"""


@pytest.mark.parametrize(
    ("extra", "ends"),
    [
        ("", (11.0, 6.0)),  # every runner at full speed: 11 s and 6 s of work
        (", compute_runners: 2", (11.0, 6.0)),  # room for both
        # One runner's worth: both at half speed until b's 6 s of work are done at 12 s; then a
        # has 5 s left alone, ending at 17 s.
        (", compute_runners: 1", (17.0, 12.0)),
    ],
)
def test_runners_share_the_servers_compute(tmp_path: Path, extra: str, ends: tuple[float, float]) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(SHARED.format(extra=extra))
    wl = load_workload(path)
    a, b = simulate(wl, "ollama").outcomes  # both sent at once, loaded in 1 ms each
    assert (a.finished_at, b.finished_at) == (
        pytest.approx(ends[0], abs=0.01),
        pytest.approx(ends[1], abs=0.01),
    )


def test_a_preempted_run_stops_taking_its_share(tmp_path: Path) -> None:
    """With one runner's worth of compute, the voice turn runs at full speed once the meal call
    it preempted has stopped (the meal call's share is gone, not just its answer)."""
    path = tmp_path / "w.yaml"
    text = PREEMPTION.format(stream="false").replace("load_gbps: 2}", "load_gbps: 2, compute_runners: 1}")
    assert "compute_runners: 1" in text
    path.write_text(text)
    meal, turn = simulate(load_workload(path), "hearth").outcomes
    assert meal.preempted == 1 and turn.completed
    assert turn.finished_at is not None and turn.started_at is not None
    assert turn.finished_at - turn.started_at == pytest.approx(turn.service_s)


def test_enough_compute_for_every_runner_changes_nothing() -> None:
    """Three models, one slot each: at most three requests run at once on the reference."""
    plain = reference_workload(seed=42)
    roomy = dataclasses.replace(plain, server=dataclasses.replace(plain.server, compute_runners=3))
    for policy in ("ollama", "hearth"):
        a, b = simulate(plain, policy), simulate(roomy, policy)
        assert a.loads == b.loads
        assert [(o.started_at, o.finished_at) for o in a.outcomes] == [
            (pytest.approx(o.started_at), pytest.approx(o.finished_at)) for o in b.outcomes
        ]
