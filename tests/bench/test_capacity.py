"""Capacity: the mock's scripted slots (the truth) and the readers that poll a cloud's capacity."""

import asyncio
import re
import threading
import time

import urllib.error
import urllib.request

import orjson
import pytest

from bench.mock_capacity import Autoscale, Capacity, parse_autoscale, parse_schedule
from bench.mock_server import MockConfig

class _Reply:
    def __init__(self, status: int, data: bytes):
        self.status, self.data = status, data


class _Http:
    """The stdlib's client, enough for these tests (urllib3-like: request(method, url, body=))"""

    @staticmethod
    def request(method: str, url: str, body: bytes | None = None) -> _Reply:
        req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return _Reply(resp.status, resp.read())
        except urllib.error.HTTPError as err:
            return _Reply(err.code, err.read())


HTTP = _Http()


def get_json(url: str) -> dict:
    return orjson.loads(HTTP.request("GET", url).data)


def gauges(text: str) -> dict:
    """Prometheus text -> {name: value} (labels dropped)."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_:]+)(\{[^}]*\})? ([0-9.e+-]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(3))
    return out


# -- the slot gate and its controller, on a fake clock ------------------------------------------------


def run_with_waiters(cap: Capacity, n: int, steps):
    """Start n requests on cap (each holds its slot), then call steps(cap, tasks) on the loop."""

    async def main():
        hold = asyncio.Event()

        async def request():
            await cap.acquire()
            try:
                await hold.wait()
            finally:
                cap.release()

        tasks = [asyncio.create_task(request()) for _ in range(n)]
        await asyncio.sleep(0)
        result = steps(cap, tasks)
        hold.set()
        await asyncio.gather(*tasks)
        return result

    return asyncio.run(main())


def test_slots_serve_first_come_first_served_and_the_rest_wait():
    cap = Capacity(2)
    seen = run_with_waiters(cap, 5, lambda c, _t: (c.running, c.waiting))
    assert seen == (2, 3)
    assert (cap.running, cap.waiting) == (0, 0)


def test_autoscaler_decides_after_sustain_and_serves_after_provision():
    cap = Capacity(2, autoscale=Autoscale(max_slots=6, queue_above=1, sustain_s=5, provision_s=10))
    t0 = cap.t0_mono

    def steps(c, _tasks):
        c.tick(t0 + 1)  # 3 waiting > 1: the breach starts
        c.tick(t0 + 5.9)
        assert c.desired == 2  # not sustained yet
        c.tick(t0 + 6.0)
        assert (c.desired, c.slots) == (4, 2)  # decided, not ready
        c.tick(t0 + 15.9)
        assert c.slots == 2
        c.tick(t0 + 16.0)
        return c.slots, c.running, c.waiting

    assert run_with_waiters(cap, 5, steps) == (4, 4, 1)
    assert [(e["kind"], e["from"], e["to"], e["t_s"]) for e in cap.events] == [
        ("desired", 2, 4, 6.0),
        ("ready", 2, 4, 16.0),
    ]
    assert cap.events[1]["unix"] == pytest.approx(cap.t0_unix + 16.0, abs=1e-3)


def test_a_broken_breach_starts_the_count_again():
    cap = Capacity(1, autoscale=Autoscale(max_slots=2, queue_above=0, sustain_s=5, provision_s=0))
    t0 = cap.t0_mono

    async def main():
        cap.tick(t0 + 0)
        cap.running = 1
        fut = asyncio.get_running_loop().create_future()
        cap._waiters.append(fut)
        cap.tick(t0 + 1)  # breach from 1
        cap._waiters.clear()
        cap.tick(t0 + 4)  # broken
        cap._waiters.append(fut)
        cap.tick(t0 + 5)  # breach from 5
        cap.tick(t0 + 9)
        assert cap.desired == 1
        cap.tick(t0 + 10)
        assert cap.desired == 2

    asyncio.run(main())


def test_scale_in_after_idle_never_below_the_start():
    cap = Capacity(2, autoscale=Autoscale(max_slots=4, sustain_s=0, provision_s=0, scale_in_idle_s=30))
    cap.desired = cap.slots = 4
    t0 = cap.t0_mono
    cap.running = 3  # the slots to remove are busy: no scale-in however long
    cap.tick(t0 + 0.5)
    cap.tick(t0 + 60)
    assert cap.slots == 4
    cap.running = 2
    cap.tick(t0 + 1)
    cap.tick(t0 + 30.9)
    assert cap.slots == 4
    cap.tick(t0 + 31)
    assert (cap.slots, cap.desired) == (2, 2)
    cap.tick(t0 + 100)
    assert cap.slots == 2


def test_schedule_changes_slots_at_its_times():
    cap = Capacity(1, schedule=[(0, 1), (10, 3), (20, 2)])
    t0 = cap.t0_mono
    cap.tick(t0 + 9.99)
    assert cap.slots == 1
    cap.tick(t0 + 10)
    assert cap.slots == 3
    cap.tick(t0 + 25)
    assert cap.slots == 2
    assert [(e["kind"], e["to"]) for e in cap.events] == [("desired", 3), ("ready", 3), ("desired", 2), ("ready", 2)]


def test_a_cancelled_waiter_gives_its_place_back():
    cap = Capacity(1)


    async def main():
        await cap.acquire()
        waiter = asyncio.create_task(cap.acquire())
        await asyncio.sleep(0)
        assert cap.waiting == 1
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert cap.waiting == 0
        cap.release()
        assert cap.running == 0

    asyncio.run(main())


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"max_concurrent": 0}, "max_concurrent=0: must be >= 1"),
        ({"autoscale": Autoscale(max_slots=4)}, "need max_concurrent"),
        ({"max_concurrent": 4, "autoscale": Autoscale(max_slots=2)}, "max_slots=2 is below max_concurrent=4"),
        ({"max_concurrent": 1, "capacity_schedule": ((5, 1), (5, 2))}, "increasing"),
        ({"max_concurrent": 1, "capacity_schedule": ((0, -1),)}, "slots=-1"),
        ({"max_concurrent": 1, "capacity_schedule": ((0, 1),), "autoscale": Autoscale(max_slots=2)}, "not both"),
        ({"max_concurrent": 1, "max_queue": -1}, "max_queue=-1"),
    ],
)
def test_bad_capacity_config_is_named(kwargs, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        MockConfig(**kwargs)


def test_cli_forms_parse_and_refuse_clearly():
    assert parse_schedule("0:4, 30:8") == ((0.0, 4), (30.0, 8))
    assert parse_autoscale("max=8,queue=2,sustain=5,provision=20") == Autoscale(
        max_slots=8, queue_above=2, sustain_s=5.0, provision_s=20.0
    )
    with pytest.raises(ValueError, match="SECONDS:SLOTS"):
        parse_schedule("30")
    with pytest.raises(ValueError, match="KEY one of"):
        parse_autoscale("max=8,delay=3")
    with pytest.raises(ValueError, match="needs max=SLOTS"):
        parse_autoscale("queue=2")


# -- the mock server's /capacity and /metrics ------------------------------------------------------------


def test_mock_queues_beyond_its_slots_and_shows_it_in_metrics(mock_server):
    server = mock_server(ttft_ms=300, itl_ms=1, output_tokens=4, max_concurrent=2)
    base = server.url.removesuffix("/v1")
    body = orjson.dumps({"model": "mock-model", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    threads = [
        threading.Thread(target=HTTP.request, args=("POST", server.url + "/chat/completions"), kwargs={"body": body})
        for _ in range(5)
    ]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 10
    while server.state.capacity.running + server.state.capacity.waiting < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    metrics = gauges(HTTP.request("GET", base + "/metrics").data.decode())
    snap = get_json(base + "/capacity")
    for th in threads:
        th.join()
    assert (metrics["vllm:num_requests_running"], metrics["vllm:num_requests_waiting"]) == (2, 3)
    assert metrics["mock:capacity_slots"] == 2
    assert (snap["slots"], snap["running"], snap["waiting"], snap["instances"]) == (2, 2, 3, 1)
    after = gauges(HTTP.request("GET", base + "/metrics").data.decode())
    assert after["vllm:generation_tokens_total"] == 5 * 4
    assert after["vllm:request_success_total"] == 5
    assert after["vllm:num_requests_running"] == after["vllm:num_requests_waiting"] == 0


def test_a_queued_request_reports_its_wait_in_ttft(mock_server):

    server = mock_server(ttft_ms=200, itl_ms=1, output_tokens=2, max_concurrent=1)
    body = orjson.dumps({"model": "mock-model", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    replies = []

    def send():
        replies.append(HTTP.request("POST", server.url + "/chat/completions", body=body).data)

    threads = [threading.Thread(target=send) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    ttfts = sorted(
        orjson.loads(line.removeprefix(b": metrics "))["ttft_ms"]
        for reply in replies
        for line in reply.split(b"\n\n")
        if line.startswith(b": metrics ")
    )
    # The second waited for the first's whole reply (>= 200 ms) before its own 200 ms TTFT began.
    assert ttfts[0] >= 200 and ttfts[1] >= 400


def test_full_queue_is_a_503_and_counted(mock_server):
    server = mock_server(ttft_ms=300, itl_ms=1, output_tokens=2, max_concurrent=1, max_queue=0)
    body = orjson.dumps({"model": "mock-model", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    statuses = []
    threads = [
        threading.Thread(target=lambda: statuses.append(
            HTTP.request("POST", server.url + "/chat/completions", body=body).status))
        for _ in range(3)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(statuses) == [200, 503, 503]
    assert get_json(server.url.removesuffix("/v1") + "/capacity")["rejected"] == 2


def test_mock_without_capacity_still_answers_capacity_and_metrics(mock_server):
    base = mock_server().url.removesuffix("/v1")
    assert get_json(base + "/capacity")["slots"] is None
    assert gauges(HTTP.request("GET", base + "/metrics").data.decode())["vllm:num_requests_waiting"] == 0


def test_requests_turned_away_count_as_a_long_queue():
    cap = Capacity(1, autoscale=Autoscale(max_slots=2, queue_above=5, sustain_s=1, provision_s=0), max_queue=0)
    t0 = cap.t0_mono
    cap.rejected = 1
    cap.tick(t0 + 0)
    cap.rejected = 2
    cap.tick(t0 + 1)
    assert cap.desired == 2
    cap2 = Capacity(1, autoscale=Autoscale(max_slots=2, queue_above=5, sustain_s=1, provision_s=0), max_queue=0)
    cap2.rejected = 1
    cap2.tick(cap2.t0_mono)
    cap2.tick(cap2.t0_mono + 1)  # no new rejection: the breach ended
    assert cap2.desired == 1
