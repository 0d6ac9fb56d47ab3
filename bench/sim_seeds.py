"""The scheduler comparison (`hearth sim`) over many draws of the reference workload.

One seed is one hour of traffic; a policy tuned on seed 42 alone can be lucky. This runs the
discrete-event comparison for each seed and prints, per seed and in total: model loads, the
interactive p95 wait, the throughput ratio (hearth / ollama, completions per hour of
makespan), requests over their bound under each policy, and calls Hearth preempted.

With ``--floor S``, each seed also gets its loads floor (``hearth/sim/floor.py``, at most S
seconds of solver time each): the fewest loads any scheduler could make while meeting every
bound, knowing the trace in advance ("-" where no schedule meets every bound).

"Own queue" is a yardstick for the bound: the requests that would miss their bound even if
every model stayed loaded on runners of its own (``num_parallel`` slots, first come first
served, a request given up at its bound). Those misses come from a model's own traffic (two
Home Assistant turns at once on one slot), which no choice of what to load can avoid.

    .venv/bin/python bench/sim_seeds.py                  # seeds 42 and 1-20
    .venv/bin/python bench/sim_seeds.py --seeds 1-6 --json
    .venv/bin/python bench/sim_seeds.py --no-preempt   # the same policy without preemption
    .venv/bin/python bench/sim_seeds.py --set session_gap=120 --set batch_urgency=0.75
    .venv/bin/python bench/sim_seeds.py --floor 300    # and each seed's loads floor (slow)
    .venv/bin/python bench/sim_seeds.py --duration 14400  # four hours of traffic per seed
    .venv/bin/python bench/sim_seeds.py --hold-models  # Hearth holds models (keep_alive -1)
    .venv/bin/python bench/sim_seeds.py --compute-runners 2  # runners share 2 runners' compute
    .venv/bin/python bench/sim_seeds.py --servers 2    # two Ollama boxes (clients alone: service i
                                                       # on box i mod 2)
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from hearth.gateway.policy import PolicySettings
from hearth.sim.des import simulate
from hearth.sim.floor import loads_floor
from hearth.sim.report import summarize
from hearth.sim.workload import Workload, reference_workload, service_seconds


def own_queue_misses(wl: Workload) -> int:
    """Requests over their bound with every model always loaded on runners of its own, one
    per server."""
    free: dict[str, list[float]] = defaultdict(lambda: [0.0] * wl.server.num_parallel * wl.servers)
    missed = 0
    for a in sorted(wl.arrivals, key=lambda a: a.t):
        slots = free[a.model]
        start = max(a.t, slots[0])
        bound = wl.tenants[a.tenant].max_wait_s
        if bound is not None and start - a.t > bound:
            missed += 1  # given up at its bound: it takes no slot
            continue
        service = service_seconds(wl.models[a.model], a.prompt_tokens, a.output_tokens)
        heapq.heapreplace(slots, start + service)
    return missed


@dataclass(slots=True)
class Row:
    seed: int
    requests: int
    loads: tuple[int, int]  # ollama, hearth
    interactive_p95_s: tuple[float, float]
    throughput_ratio: float  # hearth / ollama: completed ratio x makespan ratio
    completed: tuple[int, int]  # ollama, hearth (Hearth gives up a request at its bound: 503)
    makespan_s: tuple[float, float]
    over_bound: tuple[int, int]
    own_queue: int
    preempted: int
    floor: int | None = None  # fewest loads meeting every bound; None: not asked, or none can
    floor_optimal: bool = True  # False: only a lower bound was proven in the time given


def seed_row(
    seed: int,
    settings: PolicySettings | None = None,
    floor_s: float | None = None,
    duration_s: float | None = None,
    servers: int | None = None,
    hold_models: bool = False,
    compute_runners: float | None = None,
) -> Row:
    wl = reference_workload(seed=seed, duration_s=duration_s)
    if servers is not None:
        wl = dataclasses.replace(wl, servers=servers)
    if compute_runners is not None:
        wl = dataclasses.replace(wl, server=dataclasses.replace(wl.server, compute_runners=compute_runners))
    rows: dict[str, dict[str, Any]] = {}
    preempted = 0
    for policy in ("ollama", "hearth"):
        result = simulate(wl, policy, settings, hold_models=hold_models)
        rows[policy] = summarize(policy, result.outcomes, result.loads, wl.tenants)
        if policy == "hearth":
            preempted = sum(o.preempted for o in result.outcomes)
    o, h = rows["ollama"], rows["hearth"]
    floor = None if floor_s is None else loads_floor(wl, time_limit=floor_s)
    return Row(
        seed,
        len(wl.arrivals),
        (o["model_loads"], h["model_loads"]),
        (o["interactive_wait_p95_s"], h["interactive_wait_p95_s"]),
        round(h["throughput_per_h"] / o["throughput_per_h"], 3),
        (o["completed"], h["completed"]),
        (o["makespan_s"], h["makespan_s"]),
        (sum(o["over_bound"].values()), sum(h["over_bound"].values())),
        own_queue_misses(wl),
        preempted,
        None if floor is None or floor.feasible is False else floor.bound,
        floor is None or floor.optimal,
    )


def _setting(ap: argparse.ArgumentParser, text: str) -> tuple[str, float]:
    """NAME=VALUE for a numeric PolicySettings field; the parser's error otherwise."""
    name, _, value = text.partition("=")
    fields = {f.name: f for f in dataclasses.fields(PolicySettings)}
    if name not in fields or fields[name].type not in ("float", float):
        numeric = sorted(n for n, f in fields.items() if f.type in ("float", float))
        ap.error(f"--set {text}: NAME must be one of {', '.join(numeric)}")
    try:
        return name, float(value)
    except ValueError:
        ap.error(f"--set {text}: VALUE must be a number")


def parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    return seeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="42,1-20", help="e.g. 42,1-20 (default)")
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    ap.add_argument("--no-preempt", action="store_true", help="Hearth's policy with preemption off")
    ap.add_argument("--duration", type=float, metavar="S", help="seconds of arrivals per seed (default 3600)")
    ap.add_argument("--floor", type=float, metavar="S", help="each seed's loads floor, S seconds at most")
    ap.add_argument("--servers", type=int, metavar="N", help="identical Ollama servers (default 1)")
    ap.add_argument("--hold-models", action="store_true", help="Hearth holds models (keep_alive -1)")
    ap.add_argument(
        "--compute-runners", type=float, metavar="C", help="runners share C runners' worth of compute"
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a scheduler setting (PolicySettings field, e.g. session_gap=120); repeatable",
    )
    args = ap.parse_args()
    settings = PolicySettings(preempt=not args.no_preempt, **dict(_setting(ap, text) for text in args.set))
    rows = [
        seed_row(
            s,
            settings,
            floor_s=args.floor,
            duration_s=args.duration,
            servers=args.servers,
            hold_models=args.hold_models,
            compute_runners=args.compute_runners,
        )
        for s in parse_seeds(args.seeds)
    ]
    ratios = [r.throughput_ratio for r in rows]
    loads = (sum(r.loads[0] for r in rows), sum(r.loads[1] for r in rows))
    over = (sum(r.over_bound[0] for r in rows), sum(r.over_bound[1] for r in rows))
    completed = (sum(r.completed[0] for r in rows), sum(r.completed[1] for r in rows))
    summary = {
        "seeds": len(rows),
        "loads": loads,
        "loads_ratio": round(loads[0] / loads[1], 2),
        "over_bound": over,
        "seeds_over_bound": sum(1 for r in rows if r.over_bound[1]),
        "own_queue": sum(r.own_queue for r in rows),
        "preempted": sum(r.preempted for r in rows),
        "throughput_ratio_mean": round(statistics.mean(ratios), 3),
        "throughput_ratio_min": min(ratios),
        "seeds_throughput_below_1": sum(1 for x in ratios if x < 1),
        # The two factors of the throughput ratio: requests answered, and how long the trace
        # took to drain (ollama / hearth: above 1 when Hearth finishes first).
        "completed": completed,
        "makespan_ratio_mean": round(statistics.mean(r.makespan_s[0] / r.makespan_s[1] for r in rows), 4),
        "seeds_makespan_longer": sum(1 for r in rows if r.makespan_s[1] > r.makespan_s[0]),
    }
    if args.floor is not None:
        floored = [r for r in rows if r.floor is not None]
        summary["floor"] = {
            "seeds": len(floored),  # those where some schedule meets every bound
            "loads": [sum(r.loads[0] for r in floored), sum(r.loads[1] for r in floored)],
            "floor": sum(r.floor for r in floored if r.floor is not None),
            "not_proven_optimal": [r.seed for r in floored if not r.floor_optimal],
            # the floor alone rules 3x out: Ollama's loads / 3 is below it
            "seeds_3x_ruled_out": sum(1 for r in floored if 3 * (r.floor or 0) > r.loads[0]),
        }
    if args.json:
        print(json.dumps({"rows": [asdict(r) for r in rows], "summary": summary}, indent=2))
        return
    print(
        "seed  requests  loads o -> h  int p95 o -> h (s)  throughput h/o  "
        "over bound o -> h  own queue  preempted" + ("  floor" if args.floor is not None else "")
    )
    for r in rows:
        print(
            f"{r.seed:>4}  {r.requests:>8}  {r.loads[0]:>5} -> {r.loads[1]:<4}  "
            f"{r.interactive_p95_s[0]:>7.1f} -> {r.interactive_p95_s[1]:<7.1f}  {r.throughput_ratio:>14.3f}  "
            f"{r.over_bound[0]:>9} -> {r.over_bound[1]:<5}  {r.own_queue:>9}  {r.preempted:>9}"
            + ("" if args.floor is None else f"  {_floor(r):>5}")
        )
    print(
        f"\n{len(rows)} seeds: loads {loads[0]} -> {loads[1]} ({summary['loads_ratio']}x fewer); "
        f"over bound {over[0]} -> {over[1]} in {summary['seeds_over_bound']} seeds "
        f"(own queue alone: {summary['own_queue']}); throughput h/o mean {summary['throughput_ratio_mean']}, "
        f"min {summary['throughput_ratio_min']}, below 1 on {summary['seeds_throughput_below_1']}; "
        f"{summary['preempted']} calls preempted"
    )
    print(
        f"throughput h/o = requests answered h/o x makespan o/h: answered {completed[1]} of "
        f"ollama's {completed[0]} ({completed[1] / completed[0]:.4f}; the rest Hearth gave up at their "
        f"bound), makespan o/h mean {summary['makespan_ratio_mean']}, longer under hearth on "
        f"{summary['seeds_makespan_longer']} seeds"
    )
    if args.floor is not None:
        f = summary["floor"]
        print(
            f"floor, over the {f['seeds']} seeds where every bound can be met: {f['floor']} loads "
            f"(ollama {f['loads'][0]}, hearth {f['loads'][1]}); 3x fewer than ollama ruled out on "
            f"{f['seeds_3x_ruled_out']} of them; floor only a bound on: {f['not_proven_optimal'] or 'none'}"
        )


def _floor(r: Row) -> str:
    if r.floor is None:
        return "-"
    return str(r.floor) if r.floor_optimal else f">={r.floor}"


if __name__ == "__main__":
    main()
