"""The scheduling policy on its own (gateway/policy.py): a clock passed by hand, no I/O."""

from __future__ import annotations

import heapq
import itertools
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from hearth.gateway.policy import BATCH, INTERACTIVE, BackendSpec, Job, Policy, PolicySettings

GB = 1e9


class Harness:
    """A policy with its grants and drops recorded in order."""

    def __init__(self, *specs: BackendSpec, **settings: float | bool) -> None:
        self.granted: list[Job] = []
        self.dropped: list[Job] = []
        self.policy = Policy(
            specs or [BackendSpec("b", memory=48 * GB)],
            PolicySettings(**settings),  # type: ignore[arg-type]
            self.granted.append,
            self.dropped.append,
        )

    def job(self, model: str, now: float, tenant: str = "t", **kw: object) -> Job:
        backends = tuple(kw.pop("backends", None) or list(self.policy._backends))  # type: ignore[call-overload]
        j = Job(tenant, model, backends, now, **kw)  # type: ignore[arg-type]
        self.policy.submit(j, now)
        return j

    def loaded(
        self, backend: str, sizes: dict[str, float], now: float = 0.0, also: tuple[str, ...] = ()
    ) -> None:
        """The backend serves ``sizes`` (and ``also``, 5 GB each) and has ``sizes`` loaded."""
        served = {**dict.fromkeys(also, 5 * GB), **sizes}
        self.policy.observe(backend, now, True, served, sizes)


def test_a_free_slot_on_a_loaded_model_is_granted_at_once() -> None:
    h = Harness()
    h.loaded("b", {"m": 5 * GB})
    j = h.job("m", 1.0)
    assert j.backend == "b" and j.position == 0 and not j.loads and j.unload == ()
    assert h.granted == [j]


def test_at_most_num_parallel_requests_per_model_reach_the_backend() -> None:
    h = Harness(BackendSpec("b", slots_per_model=2))
    h.loaded("b", {"m": 5 * GB})
    jobs = [h.job("m", 1.0) for _ in range(4)]
    assert [j.backend for j in jobs] == ["b", "b", None, None]
    assert [j.position for j in jobs] == [0, 0, 1, 2]
    h.policy.finish(jobs[0], 2.0)
    assert jobs[2].backend == "b" and jobs[3].backend is None


def test_interactive_goes_before_batch_until_batch_has_aged() -> None:
    h = Harness(aging=60.0)
    h.loaded("b", {"m": 5 * GB})
    busy = h.job("m", 0.0)
    batch = h.job("m", 1.0, tenant="ci", priority=BATCH)
    chat = h.job("m", 2.0, tenant="chat", priority=INTERACTIVE)
    h.policy.finish(busy, 10.0)
    assert chat.backend == "b" and batch.backend is None
    # Now the batch request has waited past `aging`: it competes as interactive and was first.
    late = h.job("m", 70.0, tenant="chat")
    h.policy.finish(chat, 80.0)
    assert batch.backend == "b" and late.backend is None


def test_weighted_fair_sharing_follows_start_time_fair_queueing() -> None:
    h = Harness()
    h.loaded("b", {"m": 5 * GB})
    first = h.job("m", 0.0, tenant="x")
    a = [h.job("m", 1.0, tenant="a", weight=1.0, cost=100.0) for _ in range(4)]
    b = [h.job("m", 1.0, tenant="b", weight=3.0, cost=100.0) for _ in range(8)]
    order: list[str] = []
    current = first
    for t in range(12):
        h.policy.finish(current, 10.0 + t)
        current = h.granted[-1]
        order.append(current.tenant)
    # Finish tags: a every 100, b every 33.3; ties go to the earlier arrival (a was queued first).
    assert order == ["a", "b", "b", "b", "a", "b", "b", "b", "a", "b", "b", "a"]
    assert all(j.backend == "b" for j in a + b)


def test_a_model_loads_at_once_into_free_memory() -> None:
    h = Harness()
    h.policy.observe("b", 0.0, True, {"m": 5 * GB}, {})
    j = h.job("m", 0.0, priority=BATCH)
    assert j.backend == "b" and j.loads and h.policy.loads == 1


def test_batch_work_never_evicts_a_model_others_wait_for() -> None:
    h = Harness(BackendSpec("b", max_loaded=1))
    h.loaded("b", {"busy": 5 * GB}, also=("other",))
    running = h.job("busy", 0.0, priority=BATCH)
    queued = h.job("busy", 0.0, priority=BATCH)
    other = h.job("other", 0.0, priority=BATCH, max_wait=1000.0)
    urgent_at = 1000.0 * PolicySettings().batch_urgency
    h.policy.pump(urgent_at - 200)
    assert other.backend is None  # not urgent yet, and "busy" has a queue
    h.policy.finish(running, urgent_at - 199)
    assert queued.backend == "b"  # affinity: the loaded model's queue first
    # batch_urgency of its bound: the batch request is urgent; "busy" is drained, then unloaded.
    h.policy.pump(urgent_at)
    assert other.backend is None
    h.policy.finish(queued, urgent_at + 10)
    assert other.backend == "b" and other.loads and other.unload == ("busy",)


def test_an_interactive_request_drains_a_busy_model_then_switches() -> None:
    h = Harness(BackendSpec("b", max_loaded=1))
    h.loaded("b", {"m": 5 * GB}, also=("n",))
    running = h.job("m", 0.0, priority=BATCH)
    chat = h.job("n", 1.0, priority=INTERACTIVE)
    more = h.job("m", 2.0, priority=BATCH)  # must not get "m" while it drains
    assert chat.backend is None and more.backend is None
    h.policy.finish(running, 30.0)
    assert chat.backend == "b" and chat.unload == ("m",) and more.backend is None


def test_a_switch_evicts_the_cheapest_set_that_makes_room_not_the_cheapest_models_in_turn() -> None:
    """48 GB, three models at most, Ollama's 80 % fit rule: phi4 (10.1 GB) needs one of the
    three to go, and evicting qwen leaves room (10.1 <= 0.8 * 15). Evicting llama, the
    cheapest to reload, would leave too little (0.8 * 10.5), so taking models cheapest first
    would evict llama and then qwen: a reload of llama for nothing."""
    h = Harness()
    sizes = {"mixtral": 27.5 * GB, "llama": 5.5 * GB, "qwen": 10.0 * GB}
    h.policy.observe("b", 0.0, True, {**sizes, "phi4": 10.1 * GB}, sizes)
    for model in sizes:  # each used once lately: evicting it costs its reload time
        h.policy.finish(h.job(model, 0.0, priority=BATCH), 1.0)
    voice = h.job("phi4", 2.0, priority=INTERACTIVE)
    assert voice.backend == "b" and voice.loads and voice.unload == ("qwen",)
    loaded = {m["model"] for m in h.policy.snapshot(2.0)["backends"][0]["models"]}
    assert loaded == {"mixtral", "llama", "phi4"}


def test_requests_past_their_bound_are_dropped() -> None:
    h = Harness(BackendSpec("b", max_loaded=1))
    h.loaded("b", {"m": 5 * GB})
    running = h.job("m", 0.0)
    late = h.job("m", 0.0, max_wait=10.0)
    assert h.policy.next_deadline(0.0) == 5.0  # half the bound: the urgency check
    h.policy.pump(10.0)
    assert h.dropped == [late] and late.dropped == "timeout" and late.backend is None
    assert h.policy.waiting() == 0
    h.policy.finish(running, 11.0)


def test_a_cancelled_request_leaves_the_queue() -> None:
    h = Harness()
    h.loaded("b", {"m": 5 * GB})
    running = h.job("m", 0.0)
    gone = h.job("m", 0.0)
    stays = h.job("m", 0.0)
    h.policy.cancel(gone, 1.0)
    h.policy.finish(running, 2.0)
    assert gone.backend is None and stays.backend == "b"


def test_a_model_loaded_but_busy_is_warmed_on_an_idle_second_backend() -> None:
    h = Harness(BackendSpec("one", memory=48 * GB), BackendSpec("two", memory=48 * GB))
    h.loaded("one", {"m": 5 * GB})
    h.policy.observe("two", 0.0, True, {"m": 5 * GB}, {})
    first = h.job("m", 0.0)
    second = h.job("m", 0.0)
    assert first.backend == "one" and second.backend == "two" and second.loads


def test_batch_work_keeps_room_for_an_interactive_model_in_use() -> None:
    # 48 GB, fit 80%. "big" (25 GB on disk, 27.5 loaded) would fit next to "coder" (10 GB), but
    # then only 10.5 GB stay free, too little to load "chat" (11 GB) while both batch models are
    # busy. So the batch switch evicts the idle coder too.
    h = Harness(BackendSpec("b", memory=48 * GB, max_loaded=3))
    files = {"big": 25 * GB, "coder": 10 * GB, "chat": 10 * GB}
    h.policy.observe("b", 0.0, True, files, {"coder": 10 * GB, "chat": 11 * GB})
    chat = h.job("chat", 0.0, tenant="ha", priority=INTERACTIVE)
    h.policy.finish(chat, 5.0)
    h.policy.observe("b", 60.0, True, files, {"coder": 10 * GB})  # chat unloaded (keep_alive)
    big = h.job("big", 100.0, tenant="planner", priority=BATCH)
    assert big.backend == "b" and big.unload == ("coder",)


def test_without_interactive_use_batch_models_share_the_backend() -> None:
    h = Harness(BackendSpec("b", memory=48 * GB, max_loaded=3))
    files = {"big": 25 * GB, "coder": 10 * GB}
    h.policy.observe("b", 0.0, True, files, {"coder": 10 * GB})
    big = h.job("big", 100.0, tenant="planner", priority=BATCH)
    assert big.backend == "b" and big.unload == ()


# ---- properties -----------------------------------------------------------------------------

MODELS = {"a": 5 * GB, "b": 10 * GB, "c": 10 * GB, "d": 27 * GB}


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 600),  # arrival
            st.sampled_from(sorted(MODELS)),
            st.sampled_from(["t1", "t2", "t3"]),
            st.sampled_from([INTERACTIVE, BATCH]),
            st.floats(1, 120),  # service seconds
            st.sampled_from([None, 30.0, 100.0, 1000.0]),  # max_wait
            st.booleans(),  # preemptible (the policy only ever preempts batch calls)
        ),
        min_size=1,
        max_size=60,
    ),
    st.integers(1, 2),
    st.integers(1, 2),
)
def test_every_request_is_served_or_dropped_at_its_bound_and_capacity_holds(
    reqs: list[tuple[float, str, str, int, float, float | None, bool]], parallel: int, servers: int
) -> None:
    """Driven by a tiny event loop with loads of 5 s: every request is granted (no starvation),
    or dropped exactly at its bound; never more than `parallel` per model, never more models or
    memory than the backend holds. Preempted calls are stopped and wait again: only batch calls
    that may be, never past their bound."""
    events: list[tuple[float, int, str, Job, int]] = []
    seq = itertools.count()
    service: dict[int, float] = {}
    names = tuple(f"b{i}" for i in range(servers))
    specs = [BackendSpec(n, slots_per_model=parallel, max_loaded=3, memory=48 * GB) for n in names]
    h = Harness(*specs, aging=120.0)
    for n in names:
        h.policy.observe(n, 0.0, True, MODELS, {})
    running: dict[tuple[str | None, str], int] = {}

    def on_grant(job: Job) -> None:
        h.granted.append(job)
        for victim in job.unload:
            assert running.get((job.backend, victim), 0) == 0, "evicted a model still serving"
        key = (job.backend, job.model)
        running[key] = running.get(key, 0) + 1
        assert running[key] <= parallel
        assert job.backend is not None
        backend = h.policy._backends[job.backend]
        assert len(backend.runners) <= 3
        assert backend.used() <= 48 * GB
        assert job.granted_at is not None
        end = job.granted_at + 5.0 * job.loads + service[id(job)]
        heapq.heappush(events, (end, next(seq), "end", job, job.preempted))

    def on_preempt(job: Job, backend: str) -> None:
        assert job.preemptible and job.priority == BATCH
        assert job.max_wait is None or now - job.arrived < job.max_wait
        running[(backend, job.model)] -= 1  # its "end" event is void: it carries the old count

    h.policy._on_grant = on_grant
    h.policy._on_preempt = on_preempt
    jobs = []
    for t, model, tenant, prio, svc, bound, preemptible in sorted(reqs, key=lambda r: r[0]):
        j = Job(tenant, model, names, t, priority=prio, max_wait=bound, preemptible=preemptible)
        service[id(j)] = svc
        jobs.append(j)
        heapq.heappush(events, (t, next(seq), "arrive", j, 0))
    now = 0.0
    while True:
        due = h.policy.next_deadline(now)
        if events and (due is None or events[0][0] <= due):
            now, _, kind, job, attempt = heapq.heappop(events)
            if kind == "arrive":
                h.policy.submit(job, now)
            elif attempt == job.preempted:
                running[(job.backend, job.model)] -= 1
                h.policy.finish(job, now)
        elif due is not None:
            now = due
            h.policy.pump(now)
        else:
            break  # nothing will happen any more: whatever still waits is starved
    assert h.policy.waiting() == 0
    for j in jobs:
        if j.dropped is None:
            assert j.backend in names
        else:
            assert j.max_wait is not None and j.backend is None


def test_a_retry_that_excludes_the_loaded_copy_loads_the_model_elsewhere() -> None:
    h = Harness(BackendSpec("one", memory=48 * GB), BackendSpec("two", memory=48 * GB))
    h.loaded("one", {"m": 5 * GB})
    h.policy.observe("two", 0.0, True, {"m": 5 * GB}, {})
    quick = h.job("m", 0.0)
    h.policy.finish(quick, 0.1)  # "m" answers fast: a second copy would not pay for others
    busy = h.job("m", 0.5)  # holds the loaded copy's only slot
    retry = h.job("m", 1.0, backends=("two",))  # "one" refused it before
    assert busy.backend == "one" and retry.backend == "two" and retry.loads


def test_a_short_queue_waits_for_the_loaded_copy_instead_of_evicting_another_model() -> None:
    h = Harness(
        BackendSpec("one", memory=48 * GB, max_loaded=1), BackendSpec("two", memory=48 * GB, max_loaded=1)
    )
    h.loaded("one", {"a": 5 * GB}, also=("b",))
    h.loaded("two", {"b": 5 * GB}, also=("a",))
    first = h.job("a", 0.0)
    h.policy.finish(first, 2.0)  # a takes 2 s: the policy learns it
    other = h.job("b", 2.0)
    h.policy.finish(other, 2.5)  # "b" was just used on "two": evicting it would cost a reload
    busy = h.job("a", 3.0)
    waiting = h.job("a", 3.0)
    assert busy.backend == "one" and waiting.backend is None  # no second copy on "two"
    h.policy.finish(busy, 5.0)
    assert waiting.backend == "one" and not waiting.loads


class Preempting(Harness):
    """A harness that records preemptions as the driver sees them."""

    def __init__(self, *specs: BackendSpec, **settings: float | bool) -> None:
        super().__init__(*specs, **settings)
        self.preempted: list[tuple[Job, str]] = []
        self.policy._on_preempt = lambda job, backend: self.preempted.append((job, backend))


def test_an_interactive_request_preempts_a_batch_call_that_can_be_sent_again() -> None:
    h = Preempting(BackendSpec("b", max_loaded=1))
    h.loaded("b", {"big": 26 * GB}, also=("voice",))
    meal = h.job("big", 0.0, tenant="meal", priority=BATCH, max_wait=600.0, preemptible=True)
    assert meal.backend == "b"
    # Nothing says how long "big" takes: the voice request does not bet its bound on it.
    voice = h.job("voice", 40.0, tenant="ha", max_wait=30.0)
    assert h.preempted == [(meal, "b")]
    assert voice.backend == "b" and voice.loads and voice.unload == ("big",)
    assert meal.backend is None and meal.preempted == 1 and h.policy.waiting("meal") == 1
    assert meal.arrived == 40.0  # its 40 s on the backend do not count against its bound
    assert h.policy.preemptions == 1
    # The voice model just served a turn: the meal call waits out the session gap, then reloads.
    h.policy.finish(voice, 50.0)
    gap = PolicySettings().session_gap
    h.policy.pump(50.0 + gap - 1)
    assert meal.backend is None
    assert h.policy.next_deadline(50.0 + gap - 1) == 50.0 + gap
    h.policy.pump(50.0 + gap)
    assert meal.backend == "b" and meal.loads and meal.unload == ("voice",)


def test_urgent_batch_work_leaves_a_conversation_alone_until_its_last_chance() -> None:
    h = Harness(BackendSpec("b", max_loaded=1))
    h.loaded("b", {"voice": 9 * GB}, also=("big",))
    turn = h.job("voice", 0.0, tenant="ha", max_wait=30.0)
    meal = h.job("big", 1.0, tenant="meal", priority=BATCH, max_wait=100.0)
    h.policy.finish(turn, 70.0)  # meal is urgent from 61 s, but a turn just ended
    assert meal.backend is None
    h.policy.pump(85.9)
    assert meal.backend is None
    h.policy.pump(86.0)  # 0.85 of its bound: its last chance
    assert meal.backend == "b" and meal.unload == ("voice",)


def test_a_call_that_streams_is_drained_never_preempted() -> None:
    h = Preempting(BackendSpec("b", max_loaded=1))
    h.loaded("b", {"big": 26 * GB}, also=("voice",))
    meal = h.job("big", 0.0, tenant="meal", priority=BATCH, max_wait=600.0, preemptible=False)
    voice = h.job("voice", 40.0, tenant="ha", max_wait=30.0)
    h.policy.pump(70.0)
    assert h.preempted == [] and voice.backend is None
    h.policy.finish(meal, 90.0)
    assert voice.dropped == "timeout"  # dropped at its bound: nothing could make room in time


def test_preemption_waits_for_a_drain_expected_in_time_until_urgency() -> None:
    h = Preempting(BackendSpec("b", max_loaded=1))
    h.loaded("b", {"big": 26 * GB}, also=("voice",))
    first = h.job("big", 0.0, tenant="meal", priority=BATCH, max_wait=600.0, preemptible=True)
    h.policy.finish(first, 4.0)  # "big" answers in about 4 s
    meal = h.job("big", 10.0, tenant="meal", priority=BATCH, max_wait=600.0, preemptible=True)
    voice = h.job("voice", 11.0, tenant="ha", max_wait=30.0)
    assert h.preempted == [] and voice.backend is None  # the drain should end in time
    h.policy.pump(11.0 + 14.9)
    assert h.preempted == []
    h.policy.pump(11.0 + 15.0)  # half its bound and still running: preempt now
    assert h.preempted == [(meal, "b")] and voice.backend == "b"


def test_a_call_that_could_not_start_within_its_bound_after_a_reload_is_not_preempted() -> None:
    h = Preempting(BackendSpec("b", max_loaded=1))
    h.loaded("b", {"big": 26 * GB}, also=("voice",))
    meal = h.job("big", 0.0, tenant="meal", priority=BATCH, max_wait=20.0, preemptible=True)
    # Waited 0 s, but a reload of "big" (2 + 26 / 2 = 15 s) and another run of it (unknown:
    # 0 s) leave 15 s of its 20: preemptible. With a 10 s bound it would not be.
    voice = h.job("voice", 1.0, tenant="ha", max_wait=30.0)
    assert h.preempted == [(meal, "b")] and voice.backend == "b"
    short = Preempting(BackendSpec("b", max_loaded=1))
    short.loaded("b", {"big": 26 * GB}, also=("voice",))
    meal = short.job("big", 0.0, tenant="meal", priority=BATCH, max_wait=10.0, preemptible=True)
    voice = short.job("voice", 1.0, tenant="ha", max_wait=30.0)
    assert short.preempted == [] and voice.backend is None


def test_a_poll_taken_before_an_unload_landed_does_not_bring_the_victim_back() -> None:
    h = Harness(BackendSpec("b", max_loaded=1))
    h.loaded("b", {"old": 5 * GB}, also=("new",))
    switch = h.job("new", 0.0)
    assert switch.unload == ("old",)
    # The backend has not unloaded "old" yet when the next poll runs.
    h.policy.observe("b", 1.0, True, {"old": 5 * GB, "new": 5 * GB}, {"old": 5 * GB})
    again = h.job("old", 2.0, priority=BATCH)
    assert again.backend is None  # not sent to a model that is on its way out
    assert [m["model"] for m in h.policy.snapshot(2.0)["backends"][0]["models"]] == ["new"]
    # Once a poll no longer lists it, a later listing (another client loaded it) is believed.
    h.policy.observe("b", 3.0, True, {"old": 5 * GB, "new": 5 * GB}, {"new": 5 * GB})
    h.policy.observe("b", 4.0, True, {"old": 5 * GB, "new": 5 * GB}, {"new": 5 * GB, "old": 5 * GB})
    assert {m["model"] for m in h.policy.snapshot(4.0)["backends"][0]["models"]} == {"new", "old"}


def test_fresh_batch_work_waits_for_the_loaded_copy_and_warms_a_second_only_once_aged() -> None:
    h = Harness(BackendSpec("one", memory=48 * GB), BackendSpec("two", memory=48 * GB), aging=60.0)
    h.loaded("one", {"m": 5 * GB})
    h.policy.observe("two", 0.0, True, {"m": 5 * GB}, {})
    first = h.job("m", 0.0, tenant="ci", priority=BATCH, max_wait=600.0)
    h.policy.finish(first, 40.0)  # a call takes 40 s, far longer than a 4.75 s load
    busy = h.job("m", 40.0, tenant="ci", priority=BATCH, max_wait=600.0)
    queued = h.job("m", 40.0, tenant="ci", priority=BATCH, max_wait=600.0)
    assert busy.backend == "one" and queued.backend is None  # its bound allows the wait
    h.policy.pump(99.0)
    assert queued.backend is None
    h.policy.pump(100.0)  # aged: it now competes as interactive, and a copy pays
    assert queued.backend == "two" and queued.loads


def test_an_urgent_batch_request_warms_a_second_copy() -> None:
    h = Harness(BackendSpec("one", memory=48 * GB), BackendSpec("two", memory=48 * GB), aging=1e9)
    h.loaded("one", {"m": 5 * GB})
    h.policy.observe("two", 0.0, True, {"m": 5 * GB}, {})
    busy = h.job("m", 0.0, tenant="ci", priority=BATCH, max_wait=100.0)
    queued = h.job("m", 0.0, tenant="ci", priority=BATCH, max_wait=100.0)
    h.policy.pump(59.0)
    assert busy.backend == "one" and queued.backend is None
    h.policy.pump(60.0)  # batch_urgency 0.6 of its bound
    assert queued.backend == "two" and queued.loads


def test_a_held_model_is_counted_loaded_however_long_it_idles() -> None:
    """keep_alive math.inf (the backend's hold_models): only Hearth's evictions unload, so an
    idle model is never assumed gone, and no keep_alive deadline is ever due."""
    held = Harness(BackendSpec("b", memory=48 * GB, keep_alive=math.inf))
    plain = Harness(BackendSpec("b", memory=48 * GB, keep_alive=300.0))
    busy = {}
    for h in (held, plain):
        h.loaded("b", {"m": 5 * GB, "n": 5 * GB})  # both idle since 0
        busy[h] = h.job("m", 0.0)
        h.job("m", 0.0)  # waits for m's slot: the policy has deadlines to keep
    assert plain.policy.next_deadline(1.0) == 300.0  # n's keep_alive runs out
    deadline = held.policy.next_deadline(1.0)
    assert deadline is not None and 300.0 < deadline < math.inf  # only the other deadlines
    assert held.policy.next_deadline(5_000.0) is None  # nothing comes due, ever
    for h in (held, plain):
        h.policy.finish(busy[h], 10_000.0)
    assert not held.job("n", 10_000.0).loads  # still loaded: no reload
    assert plain.job("n", 10_000.0).loads


def test_a_request_s_own_keep_alive_decides_how_long_its_model_is_counted_loaded() -> None:
    """Ollama keeps a model once idle for the keep_alive of the last request sent to it (Home
    Assistant sends -1: forever). The policy counts on the same, not on the backend's default."""
    h = Harness(BackendSpec("b", memory=48 * GB, max_loaded=2, keep_alive=300.0))
    h.loaded("b", {}, also=("voice", "chat", "coder"))
    voice = h.job("voice", 0.0, keep_alive=-1.0)
    h.policy.started(voice, 3.0)  # loaded: the backend may take the next load
    chat = h.job("chat", 3.0)
    assert voice.loads and chat.loads
    h.policy.finish(voice, 10.0)
    h.policy.finish(chat, 10.0)
    # Past the default keep_alive: chat is gone, voice is still there. A request for coder loads
    # into chat's room and evicts nothing; voice is served without a load.
    coder = h.job("coder", 1_000.0)
    assert coder.loads and coder.unload == ()
    again = h.job("voice", 1_000.0)
    assert again.backend == "b" and not again.loads
    # The last request wins: one without keep_alive puts voice back on the default.
    h.policy.finish(again, 1_010.0)
    h.policy.finish(coder, 1_010.0)
    assert h.job("voice", 1_320.0).loads


def test_the_backend_s_own_expiry_decides_how_long_an_idle_model_is_counted_loaded() -> None:
    """/api/ps says when Ollama unloads each idle model. It knows keep_alives Hearth never sent
    (OLLAMA_KEEP_ALIVE=24h on the server, a client that talks to Ollama directly), so the policy
    believes it over its own keep_alive count, until Hearth uses the model again."""
    h = Harness(BackendSpec("b", memory=48 * GB, max_loaded=2, keep_alive=300.0))
    sizes = {"voice": 10 * GB, "chat": 5 * GB}
    h.policy.observe(
        "b", 0.0, True, {**sizes, "coder": 10 * GB}, sizes, {"voice": math.inf, "chat": 86_400.0}
    )
    # Long past the configured 300 s: both are still there, so coder must evict one to load.
    coder = h.job("coder", 1_000.0)
    assert coder.loads and len(coder.unload) == 1
    kept = ({"voice", "chat"} - set(coder.unload)).pop()
    again = h.job(kept, 1_000.0)
    assert again.backend == "b" and not again.loads
    # Once Hearth has used the model, its own count applies again until the next poll says otherwise.
    h.policy.finish(again, 1_010.0)
    h.policy.finish(coder, 1_010.0)
    assert h.job(kept, 1_320.0).loads


def test_an_expiry_not_in_the_future_means_another_client_is_using_the_model() -> None:
    """Ollama sets a model's expiry when it goes idle; while a client that bypasses Hearth uses
    it, /api/ps shows the old one, already past. The model is in use: not about to go."""
    h = Harness(BackendSpec("b", memory=48 * GB, max_loaded=1, keep_alive=300.0))
    h.policy.observe("b", 0.0, True, {"m": 5 * GB, "n": 5 * GB}, {"m": 5 * GB}, {"m": 100.0})
    h.policy.observe("b", 400.0, True, {"m": 5 * GB, "n": 5 * GB}, {"m": 5 * GB}, {"m": -300.0})
    # Counted as just used at 400: still loaded at 650 (the model's own keep_alive after its use).
    j = h.job("n", 650.0)
    assert j.loads and j.unload == ("m",)
    snapshot = h.policy.snapshot(650.0)["backends"][0]["models"]
    assert [(m["model"], m["unloads_in_s"]) for m in snapshot] == [("n", None)]


def test_a_keep_alive_0_request_leaves_its_model_unloaded_once_done() -> None:
    h = Harness(BackendSpec("b", memory=48 * GB, max_loaded=1, keep_alive=300.0))
    h.loaded("b", {}, also=("once", "next"))
    once = h.job("once", 0.0, keep_alive=0.0)
    waiting = h.job("next", 1.0)  # one model at a time: waits for once to go
    assert once.loads and waiting.backend is None
    h.policy.finish(once, 5.0)
    # Ollama unloaded it: the room is free, nothing needs evicting, and a new request for it loads.
    assert waiting.backend == "b" and waiting.loads and waiting.unload == ()


def test_aged_batch_work_warms_a_copy_only_into_free_room_and_an_interactive_request_may_evict() -> None:
    h = Harness(
        BackendSpec("one", memory=48 * GB, max_loaded=1),
        BackendSpec("two", memory=48 * GB, max_loaded=1),
        aging=60.0,
    )
    h.loaded("one", {"m": 5 * GB}, also=("n",))
    h.loaded("two", {"n": 5 * GB}, also=("m",))
    h.policy.finish(h.job("m", 0.0, tenant="ci", priority=BATCH, max_wait=600.0), 40.0)  # m takes 40 s
    h.policy.finish(h.job("n", 40.0, tenant="etl", priority=BATCH), 41.0)  # n was used: a reload to come
    busy = h.job("m", 41.0, tenant="ci", priority=BATCH, max_wait=600.0)
    aged = h.job("m", 41.0, tenant="ci", priority=BATCH, max_wait=600.0)
    h.policy.pump(101.0)  # aged into interactive, but a copy on "two" would evict n
    assert busy.backend == "one" and aged.backend is None
    chat = h.job("m", 102.0, tenant="chat")  # a person waits behind the busy copy: n goes
    copied = [j for j in (aged, chat) if j.backend == "two"]
    assert len(copied) == 1 and copied[0].loads and copied[0].unload == ("n",)
