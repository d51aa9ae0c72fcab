"""Request prompts: synthetic text of a chosen token-length distribution, or a JSONL dataset.

Synthetic prompts start with a unique prefix (run, worker, request index) so no two requests share a
cacheable prefix: a prompt-cache hit would make TTFT look better than users will see.
Token lengths are approximate without the server's tokenizer (one common English word is one token
for Llama-family vocabularies); the server's `usage.prompt_tokens` is recorded when it sends it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import orjson

_WORDS = (
    "the of and to in is was for on that with as by at from his her an were are which this be had not "
    "but they have one all their there been has who more when will would can its also into time only "
    "new some after two first than other these many may most over such most used years between where "
    "then city world part well under while state people three both during made life around before "
    "water school since each known later long system high group music house small end team found "
    "number four day great work game light river field power place early name history south north "
    "west east market energy science design model cloud server memory network order value point "
    "answer question story garden window forest mountain ocean engine signal report method simple "
    "bright quiet strong clear green blue red white black yellow orange winter summer spring autumn"
).split()


class PromptError(ValueError):
    """A bad dataset or distribution; the message names the file/line or value and the fix."""


@dataclass(frozen=True)
class Distribution:
    """Token counts: `fixed`, `normal` (mean, stdev), `uniform` (low, high), clipped to >= 1, or
    `empirical`: drawn from `values` (lengths read from a dataset, see bench.workloads.dataset_lengths)."""

    kind: str
    a: float
    b: float = 0.0
    values: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "values", tuple(self.values))  # a list after the trip to a worker

    @classmethod
    def parse(cls, text: str, flag: str) -> Distribution:
        """'128' | 'normal:128,32' | 'uniform:64,256'."""
        raw = text.strip()
        try:
            if ":" not in raw:
                value = int(raw)
                if value < 1:
                    raise ValueError
                return cls("fixed", value)
            kind, _, params = raw.partition(":")
            a, b = (float(x) for x in params.split(","))
        except ValueError:
            raise PromptError(
                f"{flag} {text!r}: expected N, normal:MEAN,STDEV or uniform:LOW,HIGH (positive numbers)"
            ) from None
        if kind not in ("normal", "uniform") or a < 1 or b < 0 or (kind == "uniform" and b < a):
            raise PromptError(f"{flag} {text!r}: expected normal:MEAN,STDEV or uniform:LOW,HIGH with LOW<=HIGH, >=1")
        return cls(kind, a, b)

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return int(self.a)
        if self.kind == "normal":
            return max(1, round(rng.gauss(self.a, self.b)))
        if self.kind == "empirical":
            return rng.choice(self.values)
        return rng.randint(int(self.a), int(self.b))

    @property
    def mean(self) -> float:
        if self.kind == "empirical":
            return sum(self.values) / len(self.values)
        return self.a if self.kind != "uniform" else (self.a + self.b) / 2

    def describe(self) -> str:
        if self.kind == "fixed":
            return str(int(self.a))
        if self.kind == "empirical":
            return f"dataset lengths ({len(self.values)} turns, mean {self.mean:.0f})"
        return f"{self.kind}:{self.a:g},{self.b:g}"


@dataclass(frozen=True, slots=True)
class Prompt:
    messages: list
    prompt_tokens_target: int | None
    max_tokens: int


class SyntheticPrompts:
    def __init__(self, input_tokens: Distribution, output_tokens: Distribution, seed: int, tag: str):
        self._input = input_tokens
        self._output = output_tokens
        self._rng = random.Random(f"{seed}:{tag}")
        self._tag = tag

    def get(self, index: int) -> Prompt:
        rng = self._rng
        n = self._input.sample(rng)
        # The unique prefix takes about 6 tokens; the rest is random common words.
        prefix = f"[{self._tag}-{index}]"
        words = rng.choices(_WORDS, k=max(0, n - 6))
        text = prefix + " " + " ".join(words) if words else prefix
        return Prompt([{"role": "user", "content": text}], n, self._output.sample(rng))


def _record_to_prompt(obj: object, where: str, default_output: Distribution, rng: random.Random) -> Prompt:
    if not isinstance(obj, dict):
        raise PromptError(f"{where}: expected a JSON object with 'prompt' or 'messages'")
    messages = obj.get("messages")
    if messages is None:
        text = obj.get("prompt", obj.get("text"))
        if not isinstance(text, str) or not text:
            raise PromptError(f"{where}: needs a non-empty 'prompt' (or 'text') string or a 'messages' list")
        messages = [{"role": "user", "content": text}]
    elif not (isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages)):
        raise PromptError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    max_tokens = obj.get("max_tokens", obj.get("output_tokens"))
    if max_tokens is None:
        max_tokens = default_output.sample(rng)
    elif not isinstance(max_tokens, int) or max_tokens < 1:
        raise PromptError(f"{where}: 'max_tokens' must be a positive integer")
    target = obj.get("prompt_tokens")
    return Prompt(messages, target if isinstance(target, int) else None, max_tokens)


def load_dataset(path: str | Path, output_tokens: Distribution, seed: int = 0) -> list[Prompt]:
    """Read and validate a JSONL dataset: one {"prompt": ...} or {"messages": [...]} per line."""
    path = Path(path)
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise PromptError(f"--dataset {path}: cannot read it ({exc.strerror})") from None
    rng = random.Random(seed)
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise PromptError(f"--dataset {path}:{number}: not valid JSON ({exc})") from None
        prompts.append(_record_to_prompt(obj, f"--dataset {path}:{number}", output_tokens, rng))
    if not prompts:
        raise PromptError(f"--dataset {path}: no records; expected one JSON object per line")
    return prompts


class DatasetPrompts:
    """Walks a dataset in a seeded shuffled order; worker w of P takes every P-th item."""

    def __init__(self, prompts: list[Prompt], seed: int, worker: int, workers: int):
        order = list(range(len(prompts)))
        random.Random(seed).shuffle(order)
        self._prompts = prompts
        self._order = order
        self._worker = worker
        self._workers = max(1, workers)

    def get(self, index: int) -> Prompt:
        k = (index * self._workers + self._worker) % len(self._order)
        return self._prompts[self._order[k]]
