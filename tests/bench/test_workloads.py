"""bench.workloads: shared prefixes and sessions checked on what the mock server received, ShareGPT on the
shipped sample, exact lengths with a real `tokenizers` tokenizer, and the flags' refusals."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import orjson
import pytest

import bench
from bench.config import UsageError
from bench.mock_server import MockConfig, MockServer
from bench.prompts import Distribution, Prompt, PromptError
from bench.workloads import (
    Session,
    TokenizerText,
    WordText,
    WorkloadPrompts,
    dataset_lengths,
    load_sharegpt,
    reply_text,
    sharegpt_items,
)

# sessions run in the scheduler: one that never returns fails the test within seconds (tests/bench/conftest.py)
pytestmark = pytest.mark.usefixtures("time_limit")

SAMPLE = Path(__file__).parent / "data" / "sharegpt_sample.json"


@pytest.fixture
def logged_server():
    """A mock server that keeps every chat request body it received, in arrival order."""
    servers = []

    def start(**kwargs):
        server = MockServer(MockConfig(ttft_ms=2, itl_ms=1, **kwargs))
        bodies: list[dict] = []

        async def keep(request, _response):
            if request.path.endswith("/chat/completions"):
                bodies.append(orjson.loads(await request.read()))  # read() returns the body already read

        server.app.on_response_prepare.append(keep)
        server.start()
        servers.append(server)
        return server, bodies

    yield start
    for server in servers:
        server.stop()


def run(url, out, *args):
    return bench.run([url, "--workers", "0", "--warmup", "0", "--max-tokens", "4", "--out", str(out),
                      "--no-progress", "--no-charts", *args])


def read(out: Path):
    summary = json.loads((out / "summary.json").read_text())
    return summary, [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------- shared prefixes


def test_prefix_groups_send_g_shared_system_prompts_of_n_tokens_and_unique_user_messages(logged_server, tmp_path):
    server, bodies = logged_server()
    assert run(server.url, tmp_path / "r", "--model", "m", "--concurrency", "3", "--requests", "12",
               "--shared-prefix-tokens", "40", "--prefix-groups", "3", "--prompt-tokens", "20") == 0
    assert len(bodies) == 12
    systems = [b["messages"][0] for b in bodies]
    assert {m["role"] for m in systems} == {"system"}
    prefixes = Counter(m["content"] for m in systems)
    assert len(prefixes) == 3 and sorted(prefixes.values()) == [4, 4, 4]  # request i uses group i mod 3
    assert all(len(text.split()) == 40 - 6 + 3 for text in prefixes)  # "[system prompt g]" + 34 words
    users = [b["messages"][1]["content"] for b in bodies]
    assert len(set(users)) == 12 and all(len(b["messages"]) == 2 for b in bodies)
    summary, records = read(tmp_path / "r")
    assert summary["config"]["shared_prefix_tokens"] == 40 and summary["config"]["prefix_groups"] == 3
    assert {r["prompt_tokens_target"] for r in records} == {60}  # prefix + user message


def test_every_shard_sends_the_same_prefixes_but_its_own_user_messages(logged_server, tmp_path):
    server, bodies = logged_server()
    for i in range(2):
        assert run(server.url, tmp_path / f"s{i}", "--model", "m", "--concurrency", "2", "--requests", "4",
                   "--shared-prefix-tokens", "16", "--prefix-groups", "2", "--shard", f"{i}/2") == 0
    assert len(bodies) == 4
    first, second = bodies[:2], bodies[2:]
    assert {b["messages"][0]["content"] for b in first} == {b["messages"][0]["content"] for b in second}
    assert len({b["messages"][1]["content"] for b in bodies}) == 4
    assert all(".s1." in b["messages"][1]["content"] for b in second)


# ----------------------------------------------------------------------------------- sessions


def test_turns_resend_the_history_with_the_replies_streamed_back(logged_server, tmp_path):
    server, bodies = logged_server()
    assert run(server.url, tmp_path / "r", "--model", "m", "--concurrency", "2", "--requests", "2", "--turns", "3",
               "--think-time", "50ms", "--shared-prefix-tokens", "12") == 0
    assert len(bodies) == 6  # 2 sessions x 3 turns
    summary, records = read(tmp_path / "r")
    by_session: dict[int, list[dict]] = {}
    for rec in records:
        by_session.setdefault(rec["session"], []).append(rec)
    assert len(by_session) == 2 and all(sorted(r["turn"] for r in recs) == [1, 2, 3] for recs in by_session.values())
    # Match each request body to its session by its first user message; each turn extends the one before.
    sessions: dict[str, list[list]] = {}
    for body in bodies:
        sessions.setdefault(body["messages"][1]["content"], []).append(body["messages"])
    assert len(sessions) == 2
    for turns in sessions.values():
        assert [len(m) for m in turns] == [2, 4, 6]  # system, user / + assistant, user / ...
        for before, after in zip(turns, turns[1:], strict=False):
            assert after[: len(before)] == before
            assert after[len(before)]["role"] == "assistant" and after[len(before)]["content"] == "tok tok tok tok "
            assert after[-1]["role"] == "user" and after[-1]["content"].startswith("[turn ")
    # The think time passes between a turn's end and the next one's start (a lower bound: sleeps never end early).
    for recs in by_session.values():
        recs.sort(key=lambda r: r["turn"])
        assert all(b["start_s"] - a["end_s"] >= 0.05 for a, b in zip(recs, recs[1:], strict=False))
    turns = summary["levels"][0]["turns"]
    assert list(turns) == ["1", "2", "3"] and all(t["requests"] == 2 and t["succeeded"] == 2 for t in turns.values())
    assert summary["levels"][0]["requests"] == 6
    report = (tmp_path / "r" / "report.md").read_text()
    assert "## Per turn" in report and all(f"| c=2 | {t} | 2 / 2 | 8.0 |" in report for t in (1, 2, 3))
    assert "sessions of 3 turns, think time 0.05 s" in report
    # Only the first turn's length is known ahead (later ones carry replies): prefix + user message.
    assert sorted({r["prompt_tokens_target"] for r in records}, key=str) == [140, None]


def test_a_failed_turn_ends_its_session_and_is_counted(logged_server, tmp_path):
    server, bodies = logged_server(faults={"http_500": 1.0})
    assert run(server.url, tmp_path / "r", "--model", "m", "--concurrency", "1", "--requests", "2",
               "--turns", "3") == 1  # every request failed
    summary, records = read(tmp_path / "r")
    assert len(bodies) == 2 and [r["turn"] for r in records] == [1, 1]
    assert summary["levels"][0]["failed"] == 2 and summary["levels"][0]["errors"] == {"http_5xx": 2}
    assert "| c=1 | 1 | 0 / 2 | - |" in (tmp_path / "r" / "report.md").read_text()  # per turn: ok / all


def test_reply_text_reads_sse_and_json_replies():
    sse = (b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\ndata: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
           b'data: {"choices":[{"delta":{"content":"lo"}}]}\n\ndata: {"choices":[],"usage":{}}\n\ndata: [DONE]\n\n')
    assert reply_text(sse) == "Hello"
    assert reply_text(b'{"choices":[{"message":{"role":"assistant","content":"Hi"}}]}') == "Hi"
    assert reply_text(b"") == ""


# ----------------------------------------------------------------------------------- ShareGPT


def test_sharegpt_reader_on_the_shipped_sample():
    conversations = load_sharegpt(SAMPLE)
    # The record that starts with a gpt turn and the empty one are left out, as vLLM's bench does.
    assert [c.where.rsplit(" ", 1)[1] for c in conversations] == ["0", "1", "3", "5"]
    prompts = sharegpt_items(conversations, Distribution("fixed", 64), seed=0)
    assert all(isinstance(p, Prompt) and p.max_tokens == 64 for p in prompts)
    assert prompts[0].messages == [{"role": "user", "content": "How often should I water tomato plants in a hot summer?"}]
    assert prompts[1].messages[0] == {"role": "system", "content": "You answer in one short paragraph."}
    assert prompts[3].messages[-1]["content"] == "What is the sum of the first ten odd numbers?"  # "user" speaker
    # --dataset-output-lengths: the recorded reply's length (4 characters a token without a tokenizer).
    reply = "Water deeply two or three times a week, early in the morning, so the soil stays evenly moist."
    exact = sharegpt_items(conversations, Distribution("fixed", 64), seed=0, output_lengths=True)
    assert exact[0].max_tokens == -(-len(reply) // 4) == 24


def test_sharegpt_jsonl_reads_as_the_json_array(tmp_path):
    jsonl = tmp_path / "sample.jsonl"
    jsonl.write_bytes(b"\n".join(orjson.dumps(r) for r in json.loads(SAMPLE.read_text())) + b"\n")
    assert [c.messages for c in load_sharegpt(jsonl)] == [c.messages for c in load_sharegpt(SAMPLE)]
    assert load_sharegpt(jsonl)[2].where.endswith("sample.jsonl:4")  # the line, for error messages


def test_sharegpt_sessions_take_the_human_turns():
    sessions = sharegpt_items(load_sharegpt(SAMPLE), Distribution("fixed", 8), seed=0, turns=2, think_time_s=1.5)
    assert all(isinstance(s, Session) for s in sessions)
    bread = sessions[2]
    assert [t.content for t in bread.turns] == ["Give me a simple bread recipe.", "Can I use whole wheat flour?"]
    assert [len(s.turns) for s in sessions] == [2, 1, 2, 1] and bread.think_time_s == 1.5


def test_sharegpt_dataset_end_to_end_sends_the_first_human_turns(logged_server, tmp_path):
    server, bodies = logged_server()
    assert run(server.url, tmp_path / "r", "--model", "m", "--concurrency", "1", "--requests", "4",
               "--dataset", str(SAMPLE), "--dataset-output-lengths") == 0
    firsts = {b["messages"][-1]["content"] for b in bodies}
    assert firsts == {p.messages[-1]["content"] for p in sharegpt_items(load_sharegpt(SAMPLE), Distribution("fixed", 1), 0)}
    assert sorted(b["max_tokens"] for b in bodies) == [16, 23, 24, 35]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"conversations": [{"from": "robot", "value": "x"}]}]', "record 0 turn 0: unknown speaker 'robot'"),
        ('[{"conversations": [{"from": "human"}]}]', "record 0 turn 0: expected"),
        ('[{"turns": []}]', "record 0: expected a ShareGPT object"),
        ('{"conversations": [{"from": "gpt", "value": "hi"}]}\n', "no conversation starts with a human turn"),
        ("[{", "not valid JSON"),
    ],
)
def test_sharegpt_errors_name_the_record(tmp_path, content, message):
    path = tmp_path / "d.json"
    path.write_text(content)
    with pytest.raises(PromptError, match=message.replace("(", r"\(")):
        load_sharegpt(path)


def test_lengths_only_sampling_draws_the_datasets_lengths():
    human = dataset_lengths(SAMPLE, "input", WordText())
    assert human.kind == "empirical" and len(human.values) == 7  # every human turn of the kept conversations
    rng = random.Random(0)
    assert {human.sample(rng) for _ in range(500)} == set(human.values)
    gpt = dataset_lengths(SAMPLE, "output", WordText())
    assert max(gpt.values) == -(-len("Mix 500 g flour, 7 g yeast, 10 g salt and 320 ml warm water; knead, rise for an "
                                     "hour, shape, rise again and bake at 220 C for 30 minutes.") // 4)
    assert Distribution(*("empirical", 0, 0, list(gpt.values))) == gpt  # survives the trip to a worker


# ----------------------------------------------------------------------------------- exact lengths


@pytest.fixture(scope="module")
def bpe_tokenizer(tmp_path_factory) -> Path:
    """A real BPE tokenizer.json, trained here on a few sentences so common words split into several tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()  # as Llama 3's and GPT-2's tokenizer.json have
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog", "a river in the forest"] * 20, trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def test_tokenizer_makes_prompts_of_exactly_n_tokens(bpe_tokenizer):
    maker = TokenizerText(bpe_tokenizer)
    assert maker.count("mountain") > 1  # not one token a word: the word method would be off here
    rng = random.Random(3)
    for n in (1, 7, 64, 333):
        assert maker.count(maker.make(rng, n, "[run-1]")) == n
    prompts = WorkloadPrompts(Distribution("fixed", 50), Distribution("fixed", 4), 0, "t.0", prefix_tokens=30,
                              tokenizer=str(bpe_tokenizer))
    first = prompts.get(0)
    assert [maker.count(m["content"]) for m in first.messages] == [30, 50] and first.prompt_tokens_target == 80


def test_tokenizer_errors_name_the_file(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{}")
    with pytest.raises(PromptError, match=r"--tokenizer .*tokenizer.json: not a Hugging Face tokenizer.json"):
        TokenizerText(bad)


def test_requested_and_server_counted_prompt_tokens_are_compared(logged_server, tmp_path):
    server, _ = logged_server()
    assert run(server.url, tmp_path / "r", "--model", "m", "--concurrency", "1", "--requests", "3",
               "--prompt-tokens", "30") == 0
    check = read(tmp_path / "r")[0]["levels"][0]["prompt_tokens_check"]
    # The mock counts every prompt as 8 tokens: the report shows the gap instead of hiding it.
    assert check == {"requests": 3, "requested_mean": 30.0, "server_mean": 8.0, "server_min": 8, "server_max": 8}
    assert "| c=1 | 3 | 30.0 | 8.0 | 8 to 8 |" in (tmp_path / "r" / "report.md").read_text()


# ----------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prefix-groups", "3"], "--prefix-groups needs --shared-prefix-tokens"),
        (["--shared-prefix-tokens", "-1"], "--shared-prefix-tokens -1: must be >= 0"),
        (["--turns", "0"], "--turns 0: must be >= 1"),
        (["--think-time", "2s"], "--think-time is the pause between turns"),
        (["--dataset-output-lengths"], "--dataset-output-lengths needs a ShareGPT --dataset"),
        (["--dataset", str(SAMPLE), "--shared-prefix-tokens", "8"], "a --dataset brings its own"),
        (["--shard", "2/2"], "--shard '2/2': expected I/N with 0 <= I < N"),
        (["--start-at", "2020-01-01T00:00:00Z"], "in the past"),
        (["--start-at", "2099-01-01T00:00:00"], "give a time zone"),
        (["--concurrency", "2", "--shard", "2/3"], "every shard needs at least one slot"),
        (["--prompt-tokens", "lengths:/nonexistent.json"], "cannot read it"),
    ],
)
def test_workload_flags_refuse_bad_input_with_the_flag_named(tmp_path, args, message, capsys):
    from bench.cli import build_parser, config_from_args
    from bench.prompts import PromptError

    parsed = build_parser().parse_args(["http://127.0.0.1:9/v1", "--model", "m", *args])
    with pytest.raises((UsageError, PromptError), match=message.replace("(", r"\(")):
        cfg = config_from_args(parsed)
        cfg.levels()  # the shard split is checked here


def test_turns_with_a_plain_jsonl_dataset_is_refused(tmp_path):
    from bench.cli import build_parser, config_from_args

    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "hi"}\n')
    parsed = build_parser().parse_args(["http://127.0.0.1:9/v1", "--model", "m", "--dataset", str(path), "--turns", "2"])
    with pytest.raises(UsageError, match="--turns with --dataset needs a ShareGPT file"):
        config_from_args(parsed)
