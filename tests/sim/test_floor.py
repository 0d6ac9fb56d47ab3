"""The loads floor (sim/floor.py): exact on cases small enough to work out by hand, and never
above what the simulated Hearth reaches when it meets every bound."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from hearth.sim.des import simulate
from hearth.sim.floor import Floor, loads_floor
from hearth.sim.report import summarize
from hearth.sim.workload import Workload, load_workload, reference_workload


def workload(tmp_path: Path, text: str) -> Workload:
    path = tmp_path / "w.yaml"
    path.write_text(text)
    return load_workload(path)


def residences(floor: Floor) -> dict[str, list[tuple[float, float]]]:
    (plan,) = floor.plan.values()
    return plan


ORDER = """
name: order
seed: 1
duration_s: 60
server: {memory_gb: 10, max_loaded_models: 3, fit_fraction: 0.8, load_fixed_s: 2, load_gbps: 2}
models:
  big: {size_gb: 7, kv_gb: 0, tokens_per_s: 10, prompt_tokens_per_s: 100}
  small: {size_gb: 2, kv_gb: 0, tokens_per_s: 10, prompt_tokens_per_s: 100}
tenants:
  s: {priority: interactive, max_wait_s: 5}
  b: {priority: interactive, max_wait_s: 10}
requests:
  - {t: 0, tenant: s, model: small, prompt_tokens: 100, output_tokens: 30}
  - {t: 20, tenant: b, model: big, prompt_tokens: 100, output_tokens: 30}
  - {t: 40, tenant: s, model: small, prompt_tokens: 100, output_tokens: 30}
"""


def test_a_big_model_fits_beside_a_small_one_only_if_it_loaded_first(tmp_path: Path) -> None:
    """Together they take 9 of 10 GB, but big (7) needs 7 <= 0.8 * 8 free with small loaded,
    while small (2) fits beside big (2 <= 0.8 * 3). Small's 5 s bound forces it to load first
    (after big's 5.5 s load it would miss), so big's turn evicts it and it loads again: 3."""
    wl = workload(tmp_path, ORDER)
    floor = loads_floor(wl, time_limit=30)
    assert (floor.bound, floor.loads, floor.optimal, floor.feasible) == (3, 3, True, True)
    plan = residences(floor)
    assert len(plan["small"]) == 2 and len(plan["big"]) == 1
    (big,) = plan["big"]
    assert plan["small"][0][1] <= big[0] < plan["small"][1][0]  # evicted before big loads
    # The simulated Hearth does what the floor says is the least it can.
    hearth = simulate(wl, "hearth")
    row = summarize("hearth", hearth.outcomes, hearth.loads, wl.tenants)
    assert row["over_bound"] == {"b": 0, "s": 0}
    assert hearth.loads == 3


ALTERNATING = """
name: alternating
seed: 1
duration_s: 120
server: {{memory_gb: 48, max_loaded_models: 1, load_fixed_s: 2, load_gbps: 2}}
models:
  a: {{size_gb: 4, tokens_per_s: 20, prompt_tokens_per_s: 200}}
  b: {{size_gb: 4, tokens_per_s: 20, prompt_tokens_per_s: 200}}
tenants:
  x: {{priority: {priority}, max_wait_s: {bound}}}
  y: {{priority: {priority}, max_wait_s: {bound}}}
requests:
  - {{t: 0, tenant: x, model: a, prompt_tokens: 200, output_tokens: 40}}
  - {{t: 20, tenant: y, model: b, prompt_tokens: 200, output_tokens: 40}}
  - {{t: 40, tenant: x, model: a, prompt_tokens: 200, output_tokens: 40}}
  - {{t: 60, tenant: y, model: b, prompt_tokens: 200, output_tokens: 40}}
"""


@pytest.mark.parametrize(("priority", "bound", "loads"), [("interactive", 10, 4), ("batch", 600, 2)])
def test_work_that_may_wait_is_grouped_by_model(
    tmp_path: Path, priority: str, bound: int, loads: int
) -> None:
    """One model at a time: with 10 s bounds every turn needs its own load (4); with 600 s
    bounds a's two requests can run together, then b's (2)."""
    wl = workload(tmp_path, ALTERNATING.format(priority=priority, bound=bound))
    floor = loads_floor(wl, time_limit=30)
    assert (floor.bound, floor.loads, floor.optimal) == (loads, loads, True)
    assert sum(len(stays) for stays in residences(floor).values()) == loads


def test_no_plan_meets_a_bound_shorter_than_the_queue_ahead(tmp_path: Path) -> None:
    """Two 3 s requests at once on one slot, with a 1 s bound: the second cannot start in time
    whatever is loaded."""
    text = """
name: queue
seed: 1
duration_s: 10
server: {memory_gb: 48, num_parallel: 1}
models:
  a: {size_gb: 1, tokens_per_s: 20, prompt_tokens_per_s: 200}
tenants:
  x: {priority: interactive, max_wait_s: 1}
requests:
  - {t: 0, tenant: x, model: a, prompt_tokens: 200, output_tokens: 40}
  - {t: 0, tenant: x, model: a, prompt_tokens: 200, output_tokens: 40}
"""
    floor = loads_floor(workload(tmp_path, text), time_limit=30)
    assert floor.feasible is False and floor.loads is None


@pytest.mark.parametrize("seed", [1, 2])
def test_the_floor_is_never_above_what_hearth_reaches_within_its_bounds(seed: int) -> None:
    """Fifteen minutes of the reference homelab: where the simulated Hearth meets every bound,
    its loads are at least the floor, and the floor's own plan keeps Ollama's limits."""
    wl = reference_workload(seed=seed, duration_s=900)
    hearth = simulate(wl, "hearth")
    row = summarize("hearth", hearth.outcomes, hearth.loads, wl.tenants)
    assert not any(row["over_bound"].values())  # type: ignore[attr-defined]
    floor = loads_floor(wl, time_limit=60)
    assert floor.optimal and floor.loads is not None
    assert len({a.model for a in wl.arrivals}) <= floor.loads <= hearth.loads

    plan = residences(floor)
    assert sum(len(stays) for stays in plan.values()) == floor.loads
    edges = sorted(
        (t, +1 if i == 0 else -1) for stays in plan.values() for st in stays for i, t in enumerate(st)
    )
    loaded = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):  # unloads before loads at one instant
        loaded += step
        assert loaded <= wl.server.max_loaded_models
    for stays in plan.values():
        assert all(end0 <= start1 for (_, end0), (start1, _) in itertools.pairwise(stays))


def test_with_two_servers_each_model_may_stay_on_one_of_them(tmp_path: Path) -> None:
    """One model per server at most, two tenants alternating every 10 s with a 5 s bound: one
    server would reload on every turn, two servers need one load each."""
    turns = "\n".join(
        f"  - {{t: {10 * i}, tenant: {'xy'[i % 2]}, model: {'ab'[i % 2]}, prompt_tokens: 100, output_tokens: 20}}"
        for i in range(8)
    )
    text = f"""
name: two
seed: 1
duration_s: 90
server: {{memory_gb: 48, max_loaded_models: 1, load_fixed_s: 2, load_gbps: 2}}
servers: {{servers}}
models:
  a: {{size_gb: 4, tokens_per_s: 20, prompt_tokens_per_s: 200}}
  b: {{size_gb: 4, tokens_per_s: 20, prompt_tokens_per_s: 200}}
tenants:
  x: {{priority: interactive, max_wait_s: 5}}
  y: {{priority: interactive, max_wait_s: 5}}
requests:
{turns}
"""
    one = loads_floor(workload(tmp_path, text.replace("{servers}", "1")), time_limit=30)
    two = loads_floor(workload(tmp_path, text.replace("{servers}", "2")), time_limit=30)
    assert (one.loads, one.optimal) == (8, True)
    assert (two.loads, two.optimal) == (2, True)
    assert sorted(m for stays in two.plan.values() for m in stays) == ["a", "b"]
    assert len(two.plan) == 2  # one model on each server
