"""bench.scheduler + bench.config.split_level: closed-loop slots, open-loop arrivals, warmup, stop."""

import asyncio
import statistics
from time import perf_counter_ns

import pytest

from bench.backend import Backend
from bench.config import BenchConfig, Level, split_level
from bench.prompts import Distribution, SyntheticPrompts
from bench.scheduler import LevelRunner, LevelSpec, RequestOptions

# a scheduler that never returns fails the test within seconds (tests/bench/conftest.py)
pytestmark = pytest.mark.usefixtures("time_limit")


def run_level(url, **spec_fields):
    records = []

    async def go():
        backend = Backend(url + "/chat/completions", {"Content-Type": "application/json"}, 5.0)
        await backend.start()
        spec = LevelSpec(
            **{
                "level": 0, "mode": "closed", "concurrency": 3, "rate": None, "arrival": "poisson",
                "requests": 12, "warmup": 0, "duration_s": None, "start_at_ns": perf_counter_ns() + 1_000_000,
                "seed": 7, **spec_fields,
            }
        )
        prompts = SyntheticPrompts(Distribution("fixed", 16), Distribution("fixed", 2), 0, "t")
        runner = LevelRunner(backend, prompts, spec, RequestOptions(model="m"), records.append, 0, 1)
        try:
            await runner.run()
        finally:
            await backend.close()

    asyncio.run(go())
    return records


def test_closed_loop_keeps_exactly_c_in_flight_and_excludes_warmup(mock_server):
    server = mock_server(ttft_ms=20, itl_ms=1)
    records = run_level(server.url, concurrency=3, requests=12, warmup=3)
    assert len(records) == 15 and all(r["ok"] for r in records)
    assert sum(r["warmup"] for r in records) == 3
    # warmup drains before measuring: every warmup request ends before the first measured one starts
    assert max(r["end_s"] for r in records if r["warmup"]) <= min(r["start_s"] for r in records if not r["warmup"])
    assert server.state.max_in_flight == 3
    assert len({r["id"] for r in records}) == 15


def test_closed_loop_duration_bound(mock_server):
    server = mock_server(ttft_ms=10, itl_ms=1)
    records = run_level(server.url, concurrency=2, requests=None, duration_s=0.3)
    starts = [r["start_s"] for r in records]
    # Nothing starts once the duration is over (the slack is for a busy loop on 2 shared cores, not for
    # a missing bound: without it requests go on for the 5 s the test allows), and the level used it.
    assert records and max(starts) < 0.3 + 0.5
    assert max(starts) > 0.15


@pytest.mark.parametrize(("arrival", "cv_range"), [("poisson", (0.8, 1.2)), ("constant", (0.0, 0.001))])
def test_open_loop_arrival_statistics(mock_server, arrival, cv_range):
    server = mock_server(ttft_ms=1, itl_ms=1)
    rate = 400.0
    records = run_level(server.url, mode="rate", rate=rate, arrival=arrival, concurrency=64, requests=400, warmup=0)
    assert len(records) == 400
    scheduled = sorted(r["scheduled_s"] for r in records)
    gaps = [b - a for a, b in zip(scheduled, scheduled[1:], strict=False)]
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(1 / rate, rel=0.12)
    cv = statistics.pstdev(gaps) / mean
    assert cv_range[0] <= cv <= cv_range[1]
    # no request goes out before its arrival; lag is reported, never negative
    assert all(r["start_s"] >= r["scheduled_s"] and r["client_lag_ms"] >= 0 for r in records)


def test_open_loop_cap_limits_in_flight_and_shows_as_lag(mock_server):
    server = mock_server(ttft_ms=50, itl_ms=1)
    records = run_level(server.url, mode="rate", rate=200.0, arrival="constant", concurrency=2, requests=10, warmup=0)
    assert server.state.max_in_flight <= 2
    assert max(r["client_lag_ms"] for r in records) > 50  # arrivals queued behind the cap


def test_split_level_over_workers():
    cfg = BenchConfig(url="http://x/v1/chat/completions", base_url="http://x/v1", model="m", requests=100)
    specs = split_level(cfg, Level(0, 10, None, 10), 3, 123)
    assert [s.concurrency for s in specs] == [4, 3, 3]
    assert sum(s.requests for s in specs) == 100 and sum(s.warmup for s in specs) == 10
    assert {s.start_at_ns for s in specs} == {123}
    cfg = BenchConfig(url="u", base_url="b", model="m", rates=(9.0,), concurrency=(2,), requests=10)
    specs = split_level(cfg, cfg.levels()[0], 3, 0)
    active = [s for s in specs if s.concurrency]
    assert len(active) == 2 and sum(s.rate for s in active) == pytest.approx(9.0)
    assert sorted(s.phase for s in active) == [0.0, 0.5]
    assert sum(s.requests for s in specs) == 10


# ------------------------------------------------------------------ literal records (mutation testing)


@pytest.fixture
def logged_server():
    """A mock server that keeps every chat request body it received, in arrival order."""
    import orjson

    from bench.mock_server import MockConfig, MockServer

    servers = []

    def start(**kwargs):
        server = MockServer(MockConfig(**{"ttft_ms": 2, "itl_ms": 1, **kwargs}))
        bodies: list[dict] = []

        async def keep(request, _response):
            if request.path.endswith("/chat/completions"):
                bodies.append(orjson.loads(await request.read()))

        server.app.on_response_prepare.append(keep)
        server.start()
        servers.append(server)
        return server, bodies

    yield start
    for server in servers:
        server.stop()


def run_runner(url, options=None, worker=0, workers=1, stop_after=None, **spec_fields):
    """run_level with every knob: the runner's position in the pool, request options, a stop()."""
    records = []
    runner_box = []

    def emit(record):
        records.append(record)
        if stop_after is not None and len(records) == stop_after:
            runner_box[0].stop()

    async def go():
        backend = Backend(url + "/chat/completions", {"Content-Type": "application/json"}, 5.0)
        await backend.start()
        spec = LevelSpec(**{
            "level": 0, "mode": "closed", "concurrency": 1, "rate": None, "arrival": "constant", "requests": 3,
            "warmup": 0, "duration_s": None, "start_at_ns": perf_counter_ns() + 20_000_000, "seed": 7,
            **spec_fields,
        })
        prompts = SyntheticPrompts(Distribution("fixed", 16), Distribution("fixed", 2), 0, "t")
        runner = LevelRunner(backend, prompts, spec, options or RequestOptions(model="m"), emit, worker, workers)
        runner_box.append(runner)
        try:
            await runner.run()
        finally:
            await backend.close()
        return runner

    runner = asyncio.run(go())
    assert not runner._tasks, "run() returned with requests still in flight"
    return records, runner


def test_open_loop_records_carry_the_schedule_ids_and_the_level_as_literals(logged_server):
    server, bodies = logged_server()
    records, runner = run_runner(
        server.url, RequestOptions(model="m", include_usage=False, extra_body={"temperature": 0.5}),
        worker=1, workers=3, level=5, mode="rate", rate=100.0, arrival="constant", concurrency=4, requests=3,
        warmup=2, phase=0.5)
    records.sort(key=lambda r: r["id"])
    assert runner.sent == 5
    # This worker's half-gap offset (5 ms), then one arrival every 10 ms; ids interleave with the other workers.
    assert [r["scheduled_s"] for r in records] == [0.005, 0.015, 0.025, 0.035, 0.045]
    assert [r["id"] for r in records] == [1, 4, 7, 10, 13]
    assert [r["warmup"] for r in records] == [True, True, False, False, False]
    assert {(r["level"], r["worker"], r["prompt_tokens_target"], r["max_tokens"]) for r in records} == {(5, 1, 16, 2)}
    for r in records:
        assert r["ok"] and r["scheduled_s"] <= r["start_s"] < r["end_s"] < 5
        assert r["client_lag_ms"] == pytest.approx((r["start_s"] - r["scheduled_s"]) * 1000, abs=0.002)
        assert 0 <= r["client_lag_ms"] < 1000
    # No stream_options without include_usage; the extra body is merged in.
    assert len(bodies) == 5
    assert {tuple(sorted(b)) for b in bodies} == {("max_tokens", "messages", "model", "stream", "temperature")}
    assert {(b["model"], b["max_tokens"], b["stream"], b["temperature"]) for b in bodies} == {("m", 2, True, 0.5)}
    assert all(b["messages"][-1]["role"] == "user" for b in bodies)


def test_closed_loop_asks_for_usage_and_counts_from_the_shared_start(logged_server):
    server, bodies = logged_server()
    records, runner = run_runner(server.url, worker=0, workers=2, concurrency=2, requests=4, warmup=1)
    assert runner.sent == 5 and len(records) == 5
    assert sorted(r["id"] for r in records) == [0, 2, 4, 6, 8]
    assert [r["warmup"] for r in records].count(True) == 1
    assert all(b["stream_options"] == {"include_usage": True} and b["stream"] is True for b in bodies)
    # Closed loop sends at once: scheduled is when the slot sent, relative to the level's start (20 ms away).
    for r in records:
        assert 0 <= r["scheduled_s"] <= r["start_s"] < r["end_s"] < 5
        assert 0 <= r["client_lag_ms"] < 50


def test_open_loop_duration_counts_from_the_first_measured_arrival(mock_server):
    server = mock_server(ttft_ms=1, itl_ms=1)
    # 10 ms apart: warmup at 0 and 10 ms, measured from 20 ms; 50 ms of measurement hold 20..60 ms (5 arrivals).
    records, _ = run_runner(server.url, mode="rate", rate=100.0, arrival="constant", concurrency=8,
                            requests=None, warmup=2, duration_s=0.05)
    assert [r["scheduled_s"] for r in sorted(records, key=lambda r: r["id"])] == \
        [0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06]
    assert [r["warmup"] for r in records if r["warmup"]] == [True, True]
    assert all(r["ok"] for r in records)  # the last arrival's reply is waited for, not cut by the end of the level


def test_open_loop_arrivals_are_seeded_per_worker_and_level(mock_server):
    server = mock_server(ttft_ms=1, itl_ms=1)

    def schedule(**kw):
        records, _ = run_runner(server.url, mode="rate", rate=500.0, arrival="poisson", concurrency=8, requests=6,
                                **kw)
        return [r["scheduled_s"] for r in sorted(records, key=lambda r: r["id"])]

    first = schedule(seed=3, level=1)
    assert first == schedule(seed=3, level=1)  # the same seed, level and worker: the same arrivals
    assert first != schedule(seed=4, level=1) and first != schedule(seed=3, level=2)
    assert first[0] == 0.0 and len(set(first)) == 6


def test_stop_ends_the_level_and_cancels_what_is_in_flight(mock_server):
    server = mock_server(ttft_ms=1, itl_ms=1)
    records, runner = run_runner(server.url, mode="rate", rate=200.0, arrival="constant", concurrency=4,
                                 requests=200, stop_after=3)
    # a second's worth of arrivals planned; stopped after the third reply (what was due meanwhile may have gone)
    assert 3 <= len(records) < 100 and runner.sent < 100
    server = mock_server(ttft_ms=1, itl_ms=1)
    records, runner = run_runner(server.url, concurrency=2, requests=50, stop_after=3)
    assert 3 <= len(records) <= 4 and runner.sent <= 4


def test_stop_cancels_a_request_in_flight_without_recording_it(mock_server):
    server = mock_server(ttft_ms=3000, itl_ms=1)  # a reply that would take 3 s

    async def go():
        backend = Backend(server.url + "/chat/completions", {"Content-Type": "application/json"}, 10.0)
        await backend.start()
        spec = LevelSpec(level=0, mode="closed", concurrency=2, rate=None, arrival="constant", requests=2, warmup=0,
                         duration_s=None, start_at_ns=perf_counter_ns(), seed=0)
        prompts = SyntheticPrompts(Distribution("fixed", 16), Distribution("fixed", 2), 0, "t")
        records = []
        runner = LevelRunner(backend, prompts, spec, RequestOptions(model="m"), records.append, 0, 1)
        task = asyncio.ensure_future(runner.run())
        while server.state.in_flight < 2:
            await asyncio.sleep(0.01)
        runner.stop()
        await asyncio.wait_for(task, 2.0)  # the run ends at once, not after the 3 s reply
        await backend.close()
        return records, runner

    records, runner = asyncio.run(go())
    assert records == [] and runner.sent == 2


class FixedSessions:
    """A prompt source whose every item is the same two-turn session (the shape bench.workloads makes)."""

    def __init__(self, group):
        from bench.workloads import Session, Turn

        self.session = Session(system=[{"role": "system", "content": "S"}],
                               turns=[Turn("first", 5, 2), Turn("second", 6, 3)], group=group)

    def get(self, seq):
        return self.session


def run_sessions(url, group, worker=1, workers=2, stop_after=None, **spec_fields):
    records = []
    runner_box = []

    def emit(record):
        records.append(record)
        if stop_after is not None and len(records) == stop_after:
            runner_box[0].stop()

    async def go():
        backend = Backend(url + "/chat/completions", {"Content-Type": "application/json"}, 5.0)
        await backend.start()
        spec = LevelSpec(**{"level": 0, "mode": "closed", "concurrency": 1, "rate": None, "arrival": "constant",
                            "requests": 2, "warmup": 1, "duration_s": None, "start_at_ns": perf_counter_ns(),
                            "seed": 0, **spec_fields})
        runner = LevelRunner(backend, FixedSessions(group), spec, RequestOptions(model="m"), emit, worker, workers)
        runner_box.append(runner)
        try:
            await runner.run()
        finally:
            await backend.close()
        return runner

    runner = asyncio.run(go())
    return records, runner


def test_session_turns_are_numbered_per_session_and_carry_their_group(logged_server):
    server, bodies = logged_server()
    records, runner = run_sessions(server.url, group=3)
    # Sessions 1, 3, 5 (worker 1 of 2): turn t of session n is record n * 2 + t; the first is warmup.
    assert [(r["id"], r["session"], r["turn"], r["warmup"]) for r in records] == [
        (2, 1, 1, True), (3, 1, 2, True), (6, 3, 1, False), (7, 3, 2, False), (10, 5, 1, False), (11, 5, 2, False)]
    assert {r["prefix_group"] for r in records} == {3}
    assert [(r["prompt_tokens_target"], r["max_tokens"]) for r in records] == [(5, 2), (6, 3)] * 3
    assert runner.sent == 6
    assert [len(b["messages"]) for b in bodies] == [2, 4] * 3
    assert bodies[1]["messages"][2]["role"] == "assistant" and bodies[1]["messages"][3]["content"] == "second"
    records, _ = run_sessions(server.url, group=None, warmup=0, requests=1)
    assert [(r["id"], r["turn"]) for r in records] == [(2, 1), (3, 2)] and "prefix_group" not in records[0]


def test_a_failed_turn_ends_its_session(mock_server):
    records, runner = run_sessions(mock_server(faults={"http_500": 1.0}).url, group=None, warmup=0, requests=2)
    assert [(r["session"], r["turn"], r["ok"]) for r in records] == [(1, 1, False), (3, 1, False)]
    assert runner.sent == 2


def test_a_stop_between_turns_sends_no_further_turn(mock_server):
    # Stopped as the first turn's reply is recorded: the second turn is never sent (nor counted as sent).
    records, runner = run_sessions(mock_server().url, group=None, warmup=0, requests=3, stop_after=1)
    assert [(r["session"], r["turn"]) for r in records] == [(1, 1)]
    assert runner.sent == 1


def test_a_buffered_reply_is_measured_only_when_allowed(mock_server):
    server = mock_server(faults={"not_streaming": 1.0})
    records, _ = run_runner(server.url, requests=1)
    assert [(r["ok"], r["error"]) for r in records] == [(False, "not_streaming")]
    records, _ = run_runner(server.url, RequestOptions(model="m", allow_buffered=True), requests=1)
    assert [(r["ok"], r["error"]) for r in records] == [(True, None)]


# ------------------------------------------------------------------ load profiles, run by the scheduler itself


def test_an_open_profile_sends_on_its_schedule_shifted_by_the_workers_phase(mock_server):
    from bench.profiles import parse_profile

    server = mock_server(ttft_ms=1, itl_ms=1)
    # 100 req/s for 50 ms: arrivals every 10 ms; this worker's half-gap phase moves them 5 ms later.
    records, runner = run_runner(server.url, worker=1, workers=2, concurrency=8, arrival="constant", phase=0.5,
                                 profile=parse_profile("step:100@0.05s").public())
    records.sort(key=lambda r: r["id"])
    assert [r["scheduled_s"] for r in records] == [0.005, 0.015, 0.025, 0.035, 0.045]
    assert [r["id"] for r in records] == [1, 3, 5, 7, 9] and runner.sent == 5
    assert [(r["ok"], r["warmup"]) for r in records] == [(True, False)] * 5  # the records' warmup is a bool


def test_open_profile_poisson_arrivals_are_seeded_per_worker_and_level(mock_server):
    from bench.profiles import parse_profile

    server = mock_server(ttft_ms=1, itl_ms=1)
    profile = parse_profile("step:200@0.1s").public()  # about 20 arrivals

    def schedule(**kw):
        records, _ = run_runner(server.url, concurrency=8, arrival="poisson", profile=profile, **kw)
        return [r["scheduled_s"] for r in sorted(records, key=lambda r: r["id"])]

    first = schedule(seed=3, level=1)
    assert first == schedule(seed=3, level=1)  # the same seed, level and worker: the same arrivals
    assert first != schedule(seed=4, level=1) and first != schedule(seed=3, level=2)
    assert len(set(first)) == len(first) > 5 and all(0 < t < 0.1 for t in first)


def test_an_open_profile_stops_when_told_with_the_cap_full(mock_server):
    from bench.profiles import parse_profile

    server = mock_server(ttft_ms=1, itl_ms=1)
    # A minute of arrivals planned at 200 req/s, at most 2 in flight; stopped after the third reply, the level
    # ends there (a loop that went on would wait on the cap for ever: time_limit fails it).
    records, runner = run_runner(server.url, concurrency=2, arrival="constant", stop_after=3,
                                 profile=parse_profile("step:200@60s").public())
    assert 3 <= len(records) <= 5 and runner.sent <= 5


def test_a_closed_profile_runs_c_slots_per_step_and_nothing_after_its_end(mock_server):
    from bench.profiles import parse_profile

    server = mock_server(ttft_ms=20, itl_ms=1)
    records, runner = run_runner(server.url, concurrency=3, profile=parse_profile("cstep:1@0.1s,3@0.1s").public())
    # C=1 for 100 ms (one slot, one request after another), then C=3 until 200 ms; measured, never warmup.
    first = sorted((r for r in records if r["scheduled_s"] < 0.1), key=lambda r: r["start_s"])
    assert first and all(b["start_s"] >= a["end_s"] for a, b in zip(first, first[1:], strict=False))
    assert server.state.max_in_flight == 3 and len(records) > len(first)
    assert all(r["scheduled_s"] <= 0.2 for r in records)  # a slot sends only before the profile's end
    assert [(r["ok"], r["warmup"]) for r in records] == [(True, False)] * len(records) and runner.sent == len(records)
