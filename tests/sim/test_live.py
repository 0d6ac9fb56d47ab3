"""`hearth sim --live`: the workload replayed over real HTTP against emulated Ollama servers, straight
or through a real Hearth, in compressed time. Timing on a busy machine is loose, so these check
what must hold whatever the lag: every request answered, loads where they belong, and the live
run in the same range as the simulator."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from tests.sim.test_des import IDLE_GAP

from hearth.sim.des import simulate
from hearth.sim.live import LiveResult, compressed, gateway_settings, run_live
from hearth.sim.report import TIMED_OUT
from hearth.sim.workload import Workload, load_workload

SPEED = 200.0  # 600 simulated seconds in 3 real ones

# Two servers that hold two models each, four models, three tenants: about 50 requests in
# ten minutes, enough switching for the policies to differ.
WORKLOAD = """\
name: live-test
seed: 7
duration_s: 600
server: {memory_gb: 24, max_loaded_models: 2, num_parallel: 1, keep_alive_s: 120}
servers: 2
models:
  chat:8b:  {size_gb: 5, kv_gb: 0.5, tokens_per_s: 20, prompt_tokens_per_s: 200}
  voice:3b: {size_gb: 2, kv_gb: 0.3, tokens_per_s: 30, prompt_tokens_per_s: 300}
  code:14b: {size_gb: 9, kv_gb: 1.0, tokens_per_s: 10, prompt_tokens_per_s: 100}
  big:30b:  {size_gb: 16, kv_gb: 1.5, tokens_per_s: 6, prompt_tokens_per_s: 60}
tenants:
  chat:
    priority: interactive
    max_wait_s: 60
    traffic: {kind: poisson, model: chat:8b, per_hour: 120, prompt_tokens: [200, 800], output_tokens: [50, 150]}
  voice:
    priority: interactive
    max_wait_s: 30
    max_queue: 5
    traffic: {kind: poisson, model: voice:3b, per_hour: 90, prompt_tokens: [100, 300], output_tokens: [10, 40]}
  review:
    priority: batch
    max_wait_s: 600
    weight: 2
    stream: false     # whole answers: Hearth may preempt these calls
    traffic:
      - {kind: bursts, model: code:14b, every_s: 300, start_s: 30, size: [4, 6], spread_s: 20,
         prompt_tokens: [500, 1500], output_tokens: [50, 150]}
      - {kind: poisson, model: big:30b, per_hour: 24, prompt_tokens: [300, 600], output_tokens: [30, 80]}
"""

Played = tuple[LiveResult, set[asyncio.Task[object]]]


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    path = tmp_path_factory.mktemp("live") / "workload.yaml"
    path.write_text(WORKLOAD)
    return load_workload(path)


def play(
    workload: Workload, policy: str, speed: float = SPEED, timeout: float = 30, hold_models: bool = False
) -> Played:
    """Run live; also what tasks were left on the loop once run_live returned."""

    async def go() -> Played:
        result = await run_live(workload, policy, speed, timeout, hold_models=hold_models)
        return result, asyncio.all_tasks() - {asyncio.current_task()}

    return asyncio.run(go())


@pytest.fixture(scope="module")
def through_hearth(workload: Workload) -> Played:
    return play(workload, "hearth")


@pytest.fixture(scope="module")
def straight(workload: Workload) -> Played:
    return play(workload, "ollama")


def answered(result: LiveResult) -> list[str]:
    """What went wrong with requests that neither completed nor got a refusal status."""
    refusals = ("queue full (429: ", f"{TIMED_OUT} (503: ", "server busy (503: ")
    return [
        f"{o.arrival}: {o.rejected or 'unfinished'}"
        for o in result.outcomes
        if not (o.completed or (o.rejected is not None and o.rejected.startswith(refusals)))
    ]


def within_half(live: int, des: int) -> bool:
    return 0.5 * des <= live <= 1.5 * des


def test_every_request_through_hearth_completes_or_is_refused_with_a_status(
    workload: Workload, through_hearth: Played
) -> None:
    result, _ = through_hearth
    assert len(result.outcomes) == len(workload.arrivals) > 30
    assert [o.arrival for o in result.outcomes] == list(workload.arrivals)
    assert answered(result) == []
    assert sum(o.completed for o in result.outcomes) > len(workload.arrivals) // 2


def test_started_and_finished_times_are_simulated_seconds_in_order(through_hearth: Played) -> None:
    result, _ = through_hearth
    for o in result.outcomes:
        if o.completed:
            assert o.started_at is not None and o.finished_at is not None
            assert o.arrival.t <= o.started_at < o.finished_at < 2 * 600


def test_hearth_loads_models_on_both_backends(through_hearth: Played) -> None:
    result, _ = through_hearth
    assert len(result.loads_by_server) == 2
    assert all(n > 0 for n in result.loads_by_server)
    assert result.loads == sum(result.loads_by_server)


def test_hearth_live_loads_are_within_half_of_the_simulators(
    workload: Workload, through_hearth: Played
) -> None:
    result, _ = through_hearth
    des = simulate(workload, "hearth").loads
    assert within_half(result.loads, des), (result.loads, des)


def test_the_ollama_policy_sends_straight_to_the_servers(workload: Workload, straight: Played) -> None:
    result, _ = straight
    assert result.policy == "ollama"
    assert answered(result) == []
    # Tenants 1 and 3 on the first server, tenant 2 on the second: both load.
    assert all(n > 0 for n in result.loads_by_server)
    assert within_half(result.loads, simulate(workload, "ollama").loads)


@pytest.mark.parametrize("which", ["through_hearth", "straight"])
def test_a_run_leaves_no_task_behind(which: str, request: pytest.FixtureRequest) -> None:
    _, leftover = request.getfixturevalue(which)
    assert leftover == set()


def test_requests_still_going_at_the_timeout_are_left_unfinished(tmp_path: Path) -> None:
    path = tmp_path / "long.yaml"
    path.write_text(
        "name: long\nduration_s: 10\nmodels: {a:1b: {size_gb: 1}}\n"
        "tenants: {t: {priority: interactive}}\nrequests:\n"
        # 100,000 s of generation (100 s at speed 1000), and one waiting behind it.
        "  - {t: 0, tenant: t, model: a:1b, prompt_tokens: 10, output_tokens: 1000000}\n"
        "  - {t: 1, tenant: t, model: a:1b, prompt_tokens: 10, output_tokens: 10}\n"
    )
    result, leftover = play(load_workload(path), "hearth", speed=1000.0, timeout=1.0)
    assert [(o.completed, o.rejected) for o in result.outcomes] == [(False, None), (False, None)]
    assert result.outcomes[1].started_at is None
    assert leftover == set()


def test_gateway_settings_run_hearths_clock_at_the_emulators_speed(workload: Workload) -> None:
    urls = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    s = gateway_settings(workload, urls, 100.0, "/nowhere")
    assert [(b.name, b.kind, b.url) for b in s.backends] == [
        ("ollama-1", "ollama", urls[0]),
        ("ollama-2", "ollama", urls[1]),
    ]
    b = s.backends[0]
    assert (b.num_parallel, b.max_loaded_models, b.memory_gb, b.keep_alive) == (1, 2, 24.0, 1.2)
    voice = s.tenants["voice"]
    assert (voice.priority, voice.weight, voice.max_queue, voice.max_wait) == ("interactive", 1.0, 5, 0.3)
    assert s.tenants["review"].weight == 2.0
    assert s.tenants["chat"].max_queue == len(workload.arrivals)  # no bound in the workload: none here
    assert s.discovery.interval == pytest.approx(0.1)
    assert s.auth.trusted_networks == {}  # every client shows its own tenant's key
    default = gateway_settings(workload, urls, 1.0, "/nowhere").scheduler
    assert s.scheduler.aging == pytest.approx(default.aging / 100)
    assert s.scheduler.horizon == pytest.approx(default.horizon / 100)
    assert s.scheduler.load_fixed == pytest.approx(default.load_fixed / 100)
    assert s.scheduler.load_gbps == pytest.approx(default.load_gbps * 100)


def test_the_servers_run_speed_times_faster_so_they_report_real_seconds(workload: Workload) -> None:
    server, models = compressed(workload, 100.0)
    assert server.keep_alive_s == pytest.approx(workload.server.keep_alive_s / 100)
    for name, model in models.items():
        before = workload.models[name]
        assert server.load_seconds(model) == pytest.approx(workload.server.load_seconds(before) / 100)
        assert model.tokens_per_s == before.tokens_per_s * 100
        assert model.prompt_tokens_per_s == before.prompt_tokens_per_s * 100
        assert model.memory_gb == before.memory_gb
    same = ("memory_gb", "max_loaded_models", "num_parallel", "max_queue", "fit_fraction")
    assert [getattr(server, k) for k in same] == [getattr(workload.server, k) for k in same]


@pytest.mark.parametrize(
    ("policy", "speed", "message"),
    [("fifo", 100.0, "unknown policy"), ("hearth", 0.0, "speed"), ("hearth", float("inf"), "speed")],
)
def test_bad_arguments_are_refused_before_anything_starts(
    workload: Workload, policy: str, speed: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        asyncio.run(run_live(workload, policy, speed))


def test_shared_compute_is_refused_live(workload: Workload) -> None:
    shared = dataclasses.replace(workload, server=dataclasses.replace(workload.server, compute_runners=1.0))
    with pytest.raises(ValueError, match="discrete-event simulator only"):
        asyncio.run(run_live(shared, "hearth", SPEED))


def test_a_voice_turn_preempts_a_batch_call_through_the_real_gateway(tmp_path: Path) -> None:
    """As in test_des.py: the meal call (no stream) holds the only model slot for 110 s; the
    voice turn stops it through Hearth, and the meal call is sent again and answered whole."""
    path = tmp_path / "w.yaml"
    path.write_text("""\
name: preemption
seed: 1
duration_s: 300
server: {memory_gb: 48, max_loaded_models: 1, num_parallel: 1}
models:
  big: {size_gb: 26, tokens_per_s: 5, prompt_tokens_per_s: 50}
  voice: {size_gb: 9, tokens_per_s: 10, prompt_tokens_per_s: 100}
tenants:
  meal: {priority: batch, max_wait_s: 600, stream: false}
  ha: {priority: interactive, max_wait_s: 30}
requests:
  - {t: 0, tenant: meal, model: big, prompt_tokens: 500, output_tokens: 500}
  - {t: 20, tenant: ha, model: voice, prompt_tokens: 100, output_tokens: 20}
""")
    wl = load_workload(path)
    result, _ = play(wl, "hearth", speed=100.0)
    meal, turn = result.outcomes
    assert result.preemptions == 1
    assert turn.completed and turn.wait_s is not None and turn.wait_s < 30
    assert meal.completed and meal.started_at is not None and meal.started_at > turn.arrival.t
    assert result.loads == 3  # big, voice, big again


def test_a_held_model_outlives_the_servers_keep_alive_through_the_real_gateway(tmp_path: Path) -> None:
    """IDLE_GAP from test_des.py: ten idle minutes between two calls, a 5-minute keep_alive on
    the server. Hearth's calls carry keep_alive -1 with hold_models, and the emulated Ollama
    keeps the model; without it, the model is unloaded in between and loaded again."""
    path = tmp_path / "w.yaml"
    path.write_text(IDLE_GAP)
    wl = load_workload(path)
    held, _ = play(wl, "hearth", speed=1000.0, hold_models=True)
    plain, _ = play(wl, "hearth", speed=1000.0)
    assert all(o.completed for o in held.outcomes + plain.outcomes)
    assert (held.loads, plain.loads) == (1, 2)


def test_a_client_s_own_keep_alive_is_sent_on_through_the_real_gateway(tmp_path: Path) -> None:
    """The same gap with a client that sends keep_alive -1 (Home Assistant), scaled to the run's
    speed: the model stays over the gap, straight to the server or through Hearth."""
    path = tmp_path / "w.yaml"
    path.write_text(
        IDLE_GAP.replace("x: {priority: interactive}", "x: {priority: interactive, keep_alive_s: -1}")
    )
    wl = load_workload(path)
    for policy in ("ollama", "hearth"):
        result, _ = play(wl, policy, speed=1000.0)
        assert all(o.completed for o in result.outcomes)
        assert result.loads == 1, policy
