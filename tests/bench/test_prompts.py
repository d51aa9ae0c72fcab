"""bench.prompts: token-length distributions, unique prefixes, datasets with clear errors."""

import random

import pytest

from bench.prompts import DatasetPrompts, Distribution, PromptError, SyntheticPrompts, load_dataset


@pytest.mark.parametrize(
    ("text", "expected"),
    [("128", Distribution("fixed", 128)), ("normal:128,32", Distribution("normal", 128, 32)),
     ("uniform:64,256", Distribution("uniform", 64, 256))],
)
def test_distribution_parse(text, expected):
    assert Distribution.parse(text, "--prompt-tokens") == expected


@pytest.mark.parametrize("text", ["0", "-3", "abc", "normal:1", "uniform:9,3", "poisson:3,1", "normal:a,b"])
def test_distribution_parse_rejects(text):
    with pytest.raises(PromptError, match="--max-tokens"):
        Distribution.parse(text, "--max-tokens")


def test_distribution_samples():
    rng = random.Random(0)
    normal = [Distribution("normal", 100, 10).sample(rng) for _ in range(4000)]
    assert 98 < sum(normal) / len(normal) < 102 and min(normal) >= 1
    uniform = [Distribution("uniform", 5, 9).sample(rng) for _ in range(1000)]
    assert set(uniform) == {5, 6, 7, 8, 9}


def test_synthetic_prompts_have_unique_prefixes_and_about_the_right_length():
    prompts = SyntheticPrompts(Distribution("fixed", 200), Distribution("fixed", 32), seed=1, tag="run.0")
    texts = [prompts.get(i).messages[0]["content"] for i in range(50)]
    prefixes = {t.split(" ")[0] for t in texts}
    assert len(prefixes) == 50
    assert all(190 <= len(t.split()) + 5 <= 210 for t in texts)
    assert prompts.get(0).max_tokens == 32 and prompts.get(0).prompt_tokens_target == 200


def test_dataset_loading_and_striding(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"prompt": "hello"}\n\n{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}\n'
        '{"text": "third", "output_tokens": 7}\n'
    )
    prompts = load_dataset(path, Distribution("fixed", 64))
    assert [p.max_tokens for p in prompts] == [64, 5, 7]
    a = DatasetPrompts(prompts, seed=0, worker=0, workers=2)
    b = DatasetPrompts(prompts, seed=0, worker=1, workers=2)
    got = [a.get(0), b.get(0), a.get(1)]
    assert len({id(p) for p in got}) == 3  # workers take disjoint items


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"prompt": "ok"}\n{broken\n', ":2: not valid JSON"),
        ('{"prompt": ""}\n', ":1: needs a non-empty 'prompt'"),
        ('{"messages": []}\n', "'messages' must be"),
        ('{"prompt": "x", "max_tokens": 0}\n', "'max_tokens' must be"),
        ("[1]\n", "expected a JSON object"),
        ("\n\n", "no records"),
    ],
)
def test_dataset_errors_name_the_line(tmp_path, content, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(PromptError, match=needle.replace("[", r"\[")):
        load_dataset(path, Distribution("fixed", 8))


def test_missing_dataset_file(tmp_path):
    with pytest.raises(PromptError, match="cannot read"):
        load_dataset(tmp_path / "nope.jsonl", Distribution("fixed", 8))
