"""Reports: the figures of a run, hand-computed on small runs, the table, and the targets."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hearth.sim.report import TIMED_OUT, Outcome, compare, jain_index, percentile, render_table, summarize
from hearth.sim.specs import Priority
from hearth.sim.workload import Arrival, TenantSpec

TENANTS = {
    "a": TenantSpec("a", "interactive", max_wait_s=10),
    "b": TenantSpec("b", "batch", max_wait_s=100),
}


def out(
    tenant: str,
    t: float,
    started: float | None,
    finished: float | None,
    service: float,
    rejected: str | None = None,
    priority: Priority | None = None,
) -> Outcome:
    prio: Priority = priority or ("interactive" if tenant == "a" else "batch")
    return Outcome(Arrival(t, tenant, "m", 100, 10, prio), started, finished, service, rejected)


def small_run() -> list[Outcome]:
    return [
        out("a", 0, 2, 4, 2),  # waits 2
        out("a", 1, 13, 15, 2),  # waits 12: over a's bound of 10
        out("a", 2, None, None, 2, rejected=TIMED_OUT),  # over its bound too
        out("b", 0, 4, 10, 6),  # waits 4
        out("b", 5, None, None, 6, rejected="queue full"),  # refused at once: not over
    ]


# Outcome


def test_wait_runs_from_arrival_to_start() -> None:
    assert out("a", 3, 10, 12, 2).wait_s == 7
    assert out("a", 3, None, None, 2, rejected="queue full").wait_s is None


# Percentiles


def test_percentiles_are_nearest_rank() -> None:
    ten = [float(x) for x in range(10, 0, -1)]
    assert percentile(ten, 50) == 5
    assert percentile(ten, 90) == 9
    assert percentile(ten, 95) == 10
    assert percentile(ten, 99) == 10
    assert percentile([7.0], 50) == 7
    assert percentile([1.0, 2.0], 50) == 1
    assert percentile([1.0, 2.0], 51) == 2


def test_a_percentile_of_nothing_is_none() -> None:
    assert percentile([], 95) is None


@given(st.lists(st.floats(-1e6, 1e6), min_size=1), st.floats(1, 99), st.floats(0, 1))
def test_a_percentile_is_an_observed_value_growing_with_p(values: list[float], p: float, dp: float) -> None:
    low, high = percentile(values, p), percentile(values, p + dp)
    assert low in values and high in values
    assert low is not None and high is not None and low <= high


# Jain's index


def test_jain_is_one_when_all_are_equal() -> None:
    assert jain_index([0.5, 0.5, 0.5]) == pytest.approx(1.0)


def test_jain_is_one_over_n_when_one_takes_everything() -> None:
    assert jain_index([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)


def test_jain_of_two_unequal_shares() -> None:
    # (1 + 0.5)^2 / (2 * (1 + 0.25)) = 2.25 / 2.5
    assert jain_index([1.0, 0.5]) == pytest.approx(0.9)


@given(st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=50))
def test_jain_lies_between_one_over_n_and_one(xs: list[float]) -> None:
    j = jain_index(xs)
    assert j is not None
    assert 1 / len(xs) - 1e-9 <= j <= 1 + 1e-9


# summarize on a small hand-computed run


def test_counts() -> None:
    s = summarize("p", small_run(), loads=4, tenants=TENANTS)
    assert (s["policy"], s["requests"], s["completed"], s["rejected"], s["unfinished"]) == ("p", 5, 3, 2, 0)
    assert s["model_loads"] == 4
    assert s["rejected_by_tenant"] == {"a": 1, "b": 1}


def test_interactive_wait_percentiles_cover_completed_interactive_requests() -> None:
    s = summarize("p", small_run(), loads=0, tenants=TENANTS)
    # waits [2, 12]: p50 at rank 1, p95 and p99 at rank 2; b's wait of 4 is batch
    assert (s["interactive_wait_p50_s"], s["interactive_wait_p95_s"], s["interactive_wait_p99_s"]) == (
        2,
        12,
        12,
    )


def test_throughput_is_per_hour_of_makespan() -> None:
    s = summarize("p", small_run(), loads=0, tenants=TENANTS)
    assert s["makespan_s"] == 15  # first arrival 0, last finish 15
    assert s["throughput_per_h"] == 3 * 3600 / 15
    assert s["batch_throughput_per_h"] == 1 * 3600 / 15


def test_makespan_starts_at_the_first_arrival_even_if_it_was_rejected() -> None:
    s = summarize("p", [out("b", 10, None, None, 1, "queue full"), out("b", 20, 20, 30, 10)], 0, TENANTS)
    assert s["makespan_s"] == 20
    assert s["throughput_per_h"] == 180


def test_max_wait_is_per_tenant_over_completed_requests() -> None:
    s = summarize("p", small_run(), loads=0, tenants=TENANTS)
    assert s["max_wait_s"] == {"a": 12, "b": 4}
    assert s["max_wait_bound_s"] == {"a": 10, "b": 100}


def test_over_bound_counts_long_waits_and_timeouts_but_not_refusals() -> None:
    s = summarize("p", small_run(), loads=0, tenants=TENANTS)
    assert s["over_bound"] == {"a": 2, "b": 0}


def test_a_wait_equal_to_the_bound_is_within_it() -> None:
    s = summarize("p", [out("a", 0, 10, 11, 1)], loads=0, tenants=TENANTS)
    assert s["over_bound"] == {"a": 0, "b": 0}


def test_a_tenant_without_a_bound_is_never_over_it() -> None:
    tenants = {"free": TenantSpec("free", "batch")}
    s = summarize("p", [out("free", 0, 5000, 5001, 1), out("free", 0, None, None, 1, TIMED_OUT)], 0, tenants)
    assert s["over_bound"] == {"free": 0}
    assert s["max_wait_bound_s"] == {"free": None}


def test_jain_fairness_over_tenant_slowdowns() -> None:
    s = summarize("p", small_run(), loads=0, tenants=TENANTS)
    # a: mean service 2 / mean(service + wait) = 2 / ((4 + 14) / 2) = 2/9; b: 6 / (6 + 4) = 3/5
    xa, xb = 2 / 9, 3 / 5
    expected = (xa + xb) ** 2 / (2 * (xa**2 + xb**2))
    assert s["jain_fairness"] == pytest.approx(expected, abs=1e-4)


def test_jain_fairness_is_one_when_every_tenant_is_slowed_down_alike() -> None:
    # a waits as long as its service (slowdown 2) on both requests, b too, with other sizes
    run = [out("a", 0, 1, 2, 1), out("a", 0, 3, 6, 3), out("b", 0, 10, 20, 10)]
    assert summarize("p", run, loads=0, tenants=TENANTS)["jain_fairness"] == 1.0


def test_jain_fairness_leaves_out_tenants_that_completed_nothing() -> None:
    run = [out("a", 0, 0, 1, 1), out("b", 0, None, None, 1, "queue full")]
    assert summarize("p", run, loads=0, tenants=TENANTS)["jain_fairness"] == 1.0


def test_requests_still_running_at_the_end_are_unfinished() -> None:
    s = summarize("p", [out("a", 0, 5, None, 1), out("b", 0, None, None, 1)], 0, TENANTS)
    assert (s["completed"], s["rejected"], s["unfinished"]) == (0, 0, 2)


def test_tenants_outside_the_mapping_are_still_reported() -> None:
    s = summarize("p", [out("x", 0, 3, 4, 1, priority="batch")], loads=0, tenants={})
    assert s["max_wait_s"] == {"x": 3}
    assert s["over_bound"] == {"x": 0}


def test_figures_are_rounded() -> None:
    s = summarize("p", [out("a", 0, 1 / 3, 7, 1)], loads=0, tenants=TENANTS)
    assert s["interactive_wait_p50_s"] == 0.33
    assert s["throughput_per_h"] == 514.29


def test_the_summary_is_json() -> None:
    s = summarize("p", small_run(), loads=3, tenants=TENANTS)
    assert json.loads(json.dumps(s, allow_nan=False)) == s


# Empty cases


def test_an_empty_run_has_no_figures_to_measure() -> None:
    s = summarize("p", [], loads=0, tenants={})
    assert (s["requests"], s["completed"], s["rejected"]) == (0, 0, 0)
    assert s["interactive_wait_p50_s"] is s["interactive_wait_p95_s"] is s["interactive_wait_p99_s"] is None
    assert s["makespan_s"] is None and s["jain_fairness"] is None
    assert (s["throughput_per_h"], s["batch_throughput_per_h"]) == (0.0, 0.0)
    assert s["max_wait_s"] == s["over_bound"] == s["rejected_by_tenant"] == {}


def test_a_run_where_everything_was_rejected() -> None:
    run = [out("a", 0, None, None, 1, TIMED_OUT), out("b", 1, None, None, 1, "queue full")]
    s = summarize("p", run, loads=0, tenants=TENANTS)
    assert s["makespan_s"] is None and s["throughput_per_h"] == 0.0
    assert s["max_wait_s"] == {"a": None, "b": None}
    assert s["over_bound"] == {"a": 1, "b": 0}
    assert s["jain_fairness"] is None


def test_tenants_that_sent_nothing_appear_with_zeros() -> None:
    s = summarize("p", [], loads=0, tenants=TENANTS)
    assert s["rejected_by_tenant"] == {"a": 0, "b": 0}
    assert s["max_wait_s"] == {"a": None, "b": None}


# compare


def row(policy: str, loads: int, p95: float | None, tput: float, over: dict[str, int]) -> dict[str, object]:
    return {
        "policy": policy,
        "model_loads": loads,
        "interactive_wait_p95_s": p95,
        "throughput_per_h": tput,
        "over_bound": over,
    }


def test_compare_gives_the_ratios() -> None:
    c = compare(row("ollama", 30, 100, 50, {"a": 3}), row("hearth", 10, 40, 60, {"a": 0}))
    assert (c["baseline"], c["candidate"]) == ("ollama", "hearth")
    assert (c["loads_ratio"], c["interactive_p95_ratio"], c["throughput_ratio"]) == (3.0, 0.4, 1.2)


def test_every_target_holds_at_its_limit() -> None:
    c = compare(row("o", 30, 100, 50, {"a": 3}), row("h", 10, 50, 50, {"a": 0, "b": 0}))
    assert c["targets"] == {
        "loads_3x_fewer": True,
        "interactive_p95_halved": True,
        "no_tenant_over_bound": True,
        "throughput_not_lower": True,
    }
    assert c["all_targets_met"] is True
    assert c["tenants_over_bound"] == []


def test_each_target_fails_just_past_its_limit() -> None:
    c = compare(row("o", 30, 100, 50, {}), row("h", 11, 50.01, 49.9, {"a": 0, "b": 2}))
    assert c["targets"] == {
        "loads_3x_fewer": False,
        "interactive_p95_halved": False,
        "no_tenant_over_bound": False,
        "throughput_not_lower": False,
    }
    assert c["all_targets_met"] is False
    assert c["tenants_over_bound"] == ["b"]


def test_a_target_that_cannot_be_measured_does_not_hold() -> None:
    c = compare(row("o", 30, None, 50, {}), row("h", 0, None, 50, {}))
    assert c["interactive_p95_ratio"] is None
    assert c["targets"]["interactive_p95_halved"] is False  # type: ignore[index]
    assert c["loads_ratio"] is None  # no loads at all: the ratio is unbounded
    assert c["targets"]["loads_3x_fewer"] is True  # type: ignore[index]


def test_compare_reads_summaries() -> None:
    base = summarize("ollama", small_run(), loads=9, tenants=TENANTS)
    fast = [out("a", 0, 0, 2, 2), out("a", 1, 2, 4, 2), out("a", 2, 4, 6, 2), out("b", 0, 6, 12, 6)]
    cand = summarize("hearth", fast, loads=3, tenants=TENANTS)
    c = compare(base, cand)
    assert c["all_targets_met"] is True
    assert json.dumps(c)


# render_table


def test_the_table_has_a_line_per_policy_with_the_worst_tenant() -> None:
    rows = [
        summarize("ollama", small_run(), loads=9, tenants=TENANTS),
        summarize("hearth", [out("a", 0, 1, 3, 2), out("b", 0, 3, 9, 6)], loads=2, tenants=TENANTS),
    ]
    text = render_table(rows)
    head, rule, ollama, hearth = text.splitlines()[:4]
    assert head.split()[:2] == ["policy", "loads"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert ollama.split()[:2] == ["ollama", "9"]
    assert "12.0 a" in ollama
    assert hearth.split()[:2] == ["hearth", "2"]
    assert "3.0 b" in hearth
    assert len({len(line) for line in (head, rule)}) == 1


def test_the_table_has_a_block_of_max_waits_against_bounds() -> None:
    rows = [
        summarize("ollama", small_run(), loads=9, tenants=TENANTS),
        summarize("hearth", [out("a", 0, 1, 3, 2)], loads=2, tenants=TENANTS),
    ]
    block = render_table(rows).split("\n\n")[1].splitlines()
    assert block[0].split() == ["max", "wait", "(s)", "bound", "ollama", "hearth"]
    a_line = next(line for line in block if line.startswith("a "))
    assert a_line.split()[:3] == ["a", "10", "12.0"]
    assert "(2 over)" in a_line and "(1 rejected)" in a_line
    b_line = next(line for line in block if line.startswith("b "))
    assert b_line.split()[-1] == "-"  # b completed nothing under hearth


def test_the_table_shows_missing_figures_as_dashes() -> None:
    text = render_table([summarize("empty", [], loads=0, tenants={})])
    line = text.splitlines()[2]
    assert line.split() == ["empty", "0", "-", "-", "-", "0.0", "0.0", "-", "-", "-", "0", "0"]


def test_no_rows_give_just_the_header() -> None:
    assert render_table([]).splitlines()[0].startswith("policy")


def test_a_request_that_finished_without_starting_is_not_completed() -> None:
    s = summarize("p", [out("a", 0, None, 5, 1)], loads=0, tenants=TENANTS)
    assert (s["completed"], s["unfinished"]) == (0, 1)
