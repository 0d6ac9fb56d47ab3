"""The fewest model loads any scheduler could reach on a workload while meeting every bound.

A yardstick for the "fewer model loads" target: a constraint program (OR-Tools CP-SAT) over the
whole trace, solved offline, as if the scheduler knew every arrival in advance. Its answer is a
floor: no scheduler, online or not, meets every tenant's bound with fewer loads.

The model, for each server and model, is a sequence of residences (a load, then the model stays
until it is unloaded); each load is one count. It keeps the constraints of Ollama that
``sim/ollama.py`` models and that bear on loads:

- every request starts (prompt evaluation begins) within its tenant's ``max_wait_s`` of its
  arrival, on a runner of its model that has finished loading, and runs its full service time;
- at most ``num_parallel`` requests at once per loaded model;
- at most ``max_loaded_models`` loaded at once, one load at a time per server, each taking
  ``load_seconds``;
- Ollama's fit rule, order included: a model loads next to the loaded ones only if its memory
  is at most ``fit_fraction`` of what they leave free (so a big model may fit in beside a small
  one that was there first, and not the other way round).

Loads are counted from an empty server, and a request may run on any server (as through Hearth).
It leaves out, so the floor can only be lower than what is reachable: keep_alive expiry (a
scheduler may keep a model as long as it likes), that an online scheduler cannot load a model
before a request for it arrives, a request's dependence on earlier answers (the trace is
fixed), and aborted runs (preemption only adds work). Times are rounded to 0.1 s
in the relaxation's favour (arrivals down, deadlines up, durations down).

``bound`` is what the solver proved; ``loads`` the best plan it found (equal when ``optimal``).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any

from hearth.sim.workload import Workload, service_seconds

TICKS = 10  # per second


@dataclass(frozen=True, slots=True)
class Floor:
    bound: int  # proven: no schedule meeting every bound makes fewer loads
    loads: int | None  # the best plan found; None: none found in time (or none exists)
    optimal: bool  # bound == loads, proven
    feasible: bool | None  # False: no schedule meets every bound; None: not settled in time
    seconds: float
    # server -> model -> residences (load start, unload), seconds, of the best plan found
    plan: dict[str, dict[str, list[tuple[float, float]]]] = field(default_factory=dict)


def loads_floor(wl: Workload, time_limit: float = 60.0, workers: int = 2) -> Floor:
    """Solve for the floor within about ``time_limit`` seconds. Raises ImportError when
    OR-Tools is not installed (it comes with Hearth's ``dev`` extra)."""
    started = time.monotonic()
    counts: dict[str, int] = {}
    for a in wl.arrivals:
        counts[a.model] = counts.get(a.model, 0) + 1
    if not counts:
        return Floor(0, 0, True, True, 0.0)
    k = 6  # residences per server and model; doubled while that may be what limits the plan
    while True:
        left = time_limit - (time.monotonic() - started)
        last = k >= max(counts.values())  # no cap: nothing to double
        got, capped = _solve(wl, counts, k, max(1.0, left if last else left / 2), workers)
        spent = time.monotonic() - started
        if not capped:
            return Floor(got.bound, got.loads, got.optimal, got.feasible, spent, got.plan)
        # A plan with more than k residences of one model on one server makes at least k + 1
        # loads of it and one of every other model.
        more = k + len(counts)
        if got.loads is not None and got.bound < more:
            optimal = got.optimal and got.loads <= more
            return Floor(got.bound, got.loads, optimal, True, spent, got.plan)
        if spent >= time_limit:
            # Nothing found within k residences, or nothing proven below what more would cost.
            proven = more if got.feasible is False else min(got.bound, more)
            return Floor(proven, got.loads, False, got.feasible or None, spent, got.plan)
        k *= 2


Residence = tuple[Any, Any, Any]  # present (bool var), load start, unload (int vars, ticks)


def _solve(
    wl: Workload, counts: dict[str, int], k: int, time_limit: float, workers: int
) -> tuple[Floor, bool]:
    """One CP-SAT run with at most ``k`` residences per server and model, and whether that
    limit left any model fewer residences than it has requests."""
    from ortools.sat.python import cp_model

    s = wl.server
    models = sorted(counts)
    mem = {m: wl.models[m].memory_gb for m in models}
    load = {m: math.floor(s.load_seconds(wl.models[m]) * TICKS) for m in models}

    def reachable(group: tuple[str, ...]) -> bool:
        """Whether Ollama's fit rule lets these be loaded together, in some order."""
        for order in itertools.permutations(group):
            used = 0.0
            for i, m in enumerate(order):
                if i and not s.fits(mem[m], used):
                    break
                used += mem[m]
            else:
                return True
        return False

    most = min(s.max_loaded_models, len(models))
    apart: list[tuple[str, ...]] = []  # minimal groups never loaded together
    for n in range(2, most + 1):
        for group in itertools.combinations(models, n):
            if not reachable(group) and not any(set(g) <= set(group) for g in apart):
                apart.append(group)
    blockers: dict[str, list[tuple[str, ...]]] = {}  # model -> minimal loaded groups it cannot join
    for m in models:
        blockers[m] = []
        for n in range(1, most):
            for group in itertools.combinations([o for o in models if o != m], n):
                if any(set(g) <= set(group) for g in blockers[m]) or not reachable(group):
                    continue
                if not s.fits(mem[m], sum(mem[o] for o in group)):
                    blockers[m].append(group)

    bounds = {name: t.max_wait_s for name, t in wl.tenants.items()}
    service = [
        math.floor(service_seconds(wl.models[a.model], a.prompt_tokens, a.output_tokens) * TICKS)
        for a in wl.arrivals
    ]
    # Room for any plan: past every deadline, a load and a run; and, for requests without a
    # bound, a load and a run each after that.
    horizon = max(math.ceil((a.t + (bounds.get(a.tenant) or 0.0)) * TICKS) for a in wl.arrivals)
    step = max(service) + max(load.values())
    horizon += step * (1 + sum(1 for a in wl.arrivals if bounds.get(a.tenant) is None))

    cp = cp_model.CpModel()
    servers = [f"ollama-{i + 1}" for i in range(wl.servers)]
    res: dict[tuple[str, str], list[Residence]] = {}
    stay: dict[tuple[str, str], list[Any]] = {}
    capped = False
    for srv in servers:
        loading = []
        for m in models:
            n = min(k, counts[m])
            capped = capped or n < counts[m]
            res[srv, m], stay[srv, m] = [], []
            for _ in range(n):
                p = cp.new_bool_var("")
                start, end = cp.new_int_var(0, horizon, ""), cp.new_int_var(0, horizon, "")
                stay[srv, m].append(
                    cp.new_optional_interval_var(start, cp.new_int_var(0, horizon, ""), end, p, "")
                )
                loading.append(cp.new_optional_fixed_size_interval_var(start, load[m], p, ""))
                cp.add(end >= start + load[m]).only_enforce_if(p)
                res[srv, m].append((p, start, end))
            for (p0, _, e0), (p1, s1, _) in itertools.pairwise(res[srv, m]):
                cp.add_implication(p1, p0)  # the present ones first, in time order
                cp.add(e0 <= s1).only_enforce_if(p1)
        cp.add_no_overlap(loading)  # one load at a time
        everything = [iv for m in models for iv in stay[srv, m]]
        cp.add_cumulative(everything, [1] * len(everything), s.max_loaded_models)
        for group in apart:
            ivs = [iv for m in group for iv in stay[srv, m]]
            cp.add_cumulative(ivs, [1] * len(ivs), len(group) - 1)

    covers: dict[tuple[int, int], Any] = {}

    def covering(a: Residence, b: Residence) -> Any:
        """A literal that must be true when residence b is present at the start of residence a."""
        key = (id(a), id(b))
        if key not in covers:
            y, before, after = cp.new_bool_var(""), cp.new_bool_var(""), cp.new_bool_var("")
            cp.add(b[1] > a[1]).only_enforce_if(before)
            cp.add(a[1] >= b[2]).only_enforce_if(after)
            cp.add_bool_or([y, ~b[0], before, after])
            covers[key] = y
        return covers[key]

    for srv in servers:
        for m in models:
            for r in res[srv, m]:
                for group in blockers[m]:
                    for combo in itertools.product(*(res[srv, o] for o in group)):
                        cp.add_bool_or([~r[0], *(~covering(r, o) for o in combo)])

    runs: dict[tuple[str, str], list[Any]] = {key: [] for key in res}
    for a, d in zip(wl.arrivals, service, strict=True):
        bound = bounds.get(a.tenant)
        latest = horizon - d if bound is None else math.ceil((a.t + bound) * TICKS)
        begin = cp.new_int_var(math.floor(a.t * TICKS), latest, "")
        choices = []
        for srv in servers:
            for p, start, end in res[srv, a.model]:
                x = cp.new_bool_var("")
                cp.add_implication(x, p)
                cp.add(begin >= start + load[a.model]).only_enforce_if(x)
                cp.add(begin + d <= end).only_enforce_if(x)
                runs[srv, a.model].append(cp.new_optional_fixed_size_interval_var(begin, d, x, ""))
                choices.append(x)
        cp.add_exactly_one(choices)
    for ivs in runs.values():
        cp.add_cumulative(ivs, [1] * len(ivs), s.num_parallel)

    cp.minimize(sum(p for seq in res.values() for p, _, _ in seq))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit
    solver.parameters.num_workers = workers
    status = solver.solve(cp)
    if status == cp_model.INFEASIBLE:
        return Floor(0, None, False, False, solver.wall_time), capped
    found = status in (cp_model.OPTIMAL, cp_model.FEASIBLE)
    plan: dict[str, dict[str, list[tuple[float, float]]]] = {}
    if found:
        for (srv, m), seq in res.items():
            kept = [(solver.value(b) / TICKS, solver.value(e) / TICKS) for p, b, e in seq if solver.value(p)]
            if kept:
                plan.setdefault(srv, {})[m] = kept
    loads = round(solver.objective_value) if found else None
    # Each model with requests loads at least once somewhere: a floor even when nothing is proven.
    bound = max(len(counts), math.ceil(solver.best_objective_bound - 1e-6) if found else 0)
    optimal = status == cp_model.OPTIMAL
    return Floor(bound, loads, optimal, True if found else None, solver.wall_time, plan), capped
