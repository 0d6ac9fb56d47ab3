"""The simulator's output: what happened to each request, the figures a policy is judged on,
a terminal table, and the comparison of a candidate policy against the baseline.

Percentiles are nearest-rank: the p-th percentile of n sorted values is the value at rank
ceil(p / 100 * n), so it is always an observed wait (p99 of fewer than 100 values is the largest).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from hearth.sim.workload import Arrival, TenantSpec

__all__ = ["TIMED_OUT", "Outcome", "compare", "percentile", "render_table", "summarize"]

# Outcome.rejected for a request given up after waiting its tenant's bound (anything starting
# with it counts): such a request is over its bound, unlike one refused at once (queue full).
TIMED_OUT = "timed out"


@dataclass(slots=True)
class Outcome:
    """What happened to one arrival."""

    arrival: Arrival
    started_at: float | None  # prompt evaluation began on a loaded runner; None: never
    finished_at: float | None
    service_s: float  # its own prompt eval + generation on an idle loaded runner
    rejected: str | None = None  # "queue full", "timed out", "server busy"...
    preempted: int = 0  # runs aborted for an interactive request, then sent again
    lost_s: float = 0.0  # service time those runs had used

    @property
    def wait_s(self) -> float | None:
        return None if self.started_at is None else self.started_at - self.arrival.t

    @property
    def completed(self) -> bool:
        return self.rejected is None and self.started_at is not None and self.finished_at is not None

    @property
    def timed_out(self) -> bool:
        return self.rejected is not None and self.rejected.startswith(TIMED_OUT)


def percentile(values: Iterable[float], p: float) -> float | None:
    """Nearest-rank percentile (0 < p <= 100); None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def jain_index(xs: Sequence[float]) -> float | None:
    """(sum x)^2 / (n * sum x^2): 1.0 when all are equal, 1/n when one takes everything."""
    if not xs:
        return None
    squares = sum(x * x for x in xs)
    if squares == 0:
        return 1.0
    return sum(xs) ** 2 / (len(xs) * squares)


def summarize(
    policy: str, outcomes: Sequence[Outcome], loads: int, tenants: Mapping[str, TenantSpec]
) -> dict[str, object]:
    """The figures of one run, JSON-serialisable; None where there is nothing to measure.

    Waits run from arrival to the start of prompt evaluation. Throughputs are completions per
    hour of makespan (first arrival to last finish). ``over_bound`` counts, per tenant, waits
    above its max_wait_s, including requests rejected as timed out. ``jain_fairness`` is Jain's
    index over tenants of mean(service) / mean(service + wait) of their completed requests: the
    inverse of their slowdown, so 1.0 means every tenant was slowed down alike.

    A preempted request's wait runs to the start of the run that completed, so it includes the
    run that was stopped; ``preempted`` counts stops, ``preempted_work_s`` the generation they
    threw away.
    """
    names = sorted(set(tenants) | {o.arrival.tenant for o in outcomes})
    done = [o for o in outcomes if o.completed]
    rejected = [o for o in outcomes if o.rejected is not None]

    interactive = [_wait(o) for o in done if o.arrival.priority == "interactive"]
    first = min((o.arrival.t for o in outcomes), default=None)
    last = max((o.finished_at for o in done if o.finished_at is not None), default=None)
    makespan = None if first is None or last is None else last - first

    def per_hour(n: int) -> float | None:
        if n == 0:
            return 0.0
        return None if makespan is None or makespan <= 0 else _r(n * 3600.0 / makespan)

    max_wait: dict[str, float | None] = {}
    over: dict[str, int] = {}
    slowdowns: list[float] = []
    for name in names:
        mine = [o for o in outcomes if o.arrival.tenant == name]
        mine_done = [o for o in mine if o.completed]
        max_wait[name] = _r(max((_wait(o) for o in mine_done), default=None))
        spec = tenants.get(name)
        bound = None if spec is None else spec.max_wait_s
        over[name] = 0 if bound is None else sum(1 for o in mine if _over(o, bound))
        if mine_done:
            service = sum(o.service_s for o in mine_done)
            elapsed = sum(o.service_s + _wait(o) for o in mine_done)
            slowdowns.append(service / elapsed if elapsed > 0 else 1.0)

    jain = jain_index(slowdowns)
    return {
        "policy": policy,
        "requests": len(outcomes),
        "completed": len(done),
        "rejected": len(rejected),
        "unfinished": len(outcomes) - len(done) - len(rejected),
        "model_loads": loads,
        "interactive_wait_p50_s": _r(percentile(interactive, 50)),
        "interactive_wait_p95_s": _r(percentile(interactive, 95)),
        "interactive_wait_p99_s": _r(percentile(interactive, 99)),
        "batch_throughput_per_h": per_hour(sum(1 for o in done if o.arrival.priority == "batch")),
        "throughput_per_h": per_hour(len(done)),
        "makespan_s": _r(makespan),
        "max_wait_s": max_wait,
        "max_wait_bound_s": {n: _r(tenants[n].max_wait_s if n in tenants else None) for n in names},
        "rejected_by_tenant": {n: sum(1 for o in rejected if o.arrival.tenant == n) for n in names},
        "over_bound": over,
        "jain_fairness": None if jain is None else round(jain, 4),
        "preempted": sum(o.preempted for o in outcomes),
        "preempted_work_s": _r(sum(o.lost_s for o in outcomes)),
    }


def compare(baseline: Mapping[str, object], candidate: Mapping[str, object]) -> dict[str, object]:
    """The ratios the targets are judged on, and whether each target holds.

    Targets: at least 3x fewer model loads, interactive p95 wait at most half, no tenant over
    its bound, throughput no lower. A target that cannot be measured (no interactive request
    completed, say) does not hold.
    """
    b_loads, c_loads = _num(baseline, "model_loads"), _num(candidate, "model_loads")
    b_p95, c_p95 = _num(baseline, "interactive_wait_p95_s"), _num(candidate, "interactive_wait_p95_s")
    b_tput, c_tput = _num(baseline, "throughput_per_h"), _num(candidate, "throughput_per_h")
    over = candidate.get("over_bound")
    over_tenants = sorted(k for k, v in over.items() if v) if isinstance(over, Mapping) else None

    targets = {
        "loads_3x_fewer": b_loads is not None and c_loads is not None and 3 * c_loads <= b_loads,
        "interactive_p95_halved": b_p95 is not None and c_p95 is not None and 2 * c_p95 <= b_p95,
        "no_tenant_over_bound": over_tenants == [],
        "throughput_not_lower": b_tput is not None and c_tput is not None and c_tput >= b_tput,
    }
    return {
        "baseline": baseline.get("policy"),
        "candidate": candidate.get("policy"),
        "loads_ratio": _ratio(b_loads, c_loads),
        "interactive_p95_ratio": _ratio(c_p95, b_p95),
        "throughput_ratio": _ratio(c_tput, b_tput),
        # Its two factors: requests answered, and how long the trace took to drain.
        "completed": [_num(baseline, "completed"), _num(candidate, "completed")],
        "makespan_s": [_num(baseline, "makespan_s"), _num(candidate, "makespan_s")],
        "tenants_over_bound": over_tenants,
        "targets": targets,
        "all_targets_met": all(targets.values()),
    }


def render_table(rows: Sequence[Mapping[str, object]]) -> str:
    """One line per policy, then each tenant's worst wait per policy against its bound."""
    header = [
        "policy", "loads", "int p50", "int p95", "int p99", "batch/h", "total/h",
        "max wait (tenant)", "Jain", "makespan", "rejected", "preempted",
    ]  # fmt: skip
    lines = []
    for row in rows:
        worst = _worst_tenant(row)
        lines.append([
            str(row.get("policy", "")),
            _fmt(row.get("model_loads")),
            _fmt(row.get("interactive_wait_p50_s")),
            _fmt(row.get("interactive_wait_p95_s")),
            _fmt(row.get("interactive_wait_p99_s")),
            _fmt(row.get("batch_throughput_per_h")),
            _fmt(row.get("throughput_per_h")),
            "-" if worst is None else f"{_fmt(worst[1])} {worst[0]}",
            _fmt(row.get("jain_fairness"), digits=3),
            _fmt(row.get("makespan_s"), digits=0),
            _fmt(row.get("rejected")),
            _fmt(row.get("preempted")),
        ])  # fmt: skip
    out = [_grid([header, *lines], numeric_from=1)]

    tenants: list[str] = []
    bounds: dict[str, object] = {}
    for row in rows:
        for name, bound in _mapping(row, "max_wait_bound_s").items():
            if name not in tenants:
                tenants.append(name)
            bounds.setdefault(name, bound)
    for row in rows:
        for name in _mapping(row, "max_wait_s"):
            if name not in tenants:
                tenants.append(name)
    if tenants:
        block = [["max wait (s)", "bound", *(str(r.get("policy", "")) for r in rows)]]
        for name in sorted(tenants):
            bound = bounds.get(name)
            cells = [name, f"{bound:g}" if isinstance(bound, int | float) else "-"]
            for row in rows:
                cell = _fmt(_mapping(row, "max_wait_s").get(name))
                n_over = _mapping(row, "over_bound").get(name)
                n_rej = _mapping(row, "rejected_by_tenant").get(name)
                if isinstance(n_over, int) and n_over:
                    cell += f" ({n_over} over)"
                if isinstance(n_rej, int) and n_rej:
                    cell += f" ({n_rej} rejected)"
                cells.append(cell)
            block.append(cells)
        out.append(_grid(block, numeric_from=1))
    return "\n\n".join(out) + "\n"


def _wait(o: Outcome) -> float:
    w = o.wait_s
    if w is None:  # only completed requests get here, and they all started
        raise ValueError(f"{o.arrival} has no start")
    return w


def _over(o: Outcome, bound: float) -> bool:
    w = o.wait_s
    return o.timed_out or (w is not None and w > bound)


def _r(x: float | None, digits: int = 2) -> float | None:
    return None if x is None else round(float(x), digits)


def _num(row: Mapping[str, object], key: str) -> float | None:
    v = row.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return round(num / den, 3)


def _mapping(row: Mapping[str, object], key: str) -> Mapping[str, object]:
    v = row.get(key)
    return v if isinstance(v, Mapping) else {}


def _worst_tenant(row: Mapping[str, object]) -> tuple[str, float] | None:
    waits = [(k, float(v)) for k, v in _mapping(row, "max_wait_s").items() if isinstance(v, int | float)]
    return max(sorted(waits), key=lambda kv: kv[1]) if waits else None


def _fmt(v: object, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):  # and bool
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _grid(rows: list[list[str]], numeric_from: int) -> str:
    """Columns padded to their widest cell; numbers right-aligned, the first columns left."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        cells = [
            c.ljust(w) if i < numeric_from else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
