"""Workloads that look like real traffic: shared system prompts, multi-turn sessions, ShareGPT data.

- Shared prefixes (`--shared-prefix-tokens N --prefix-groups G`): G system prompts of N tokens, request i
  of a worker uses group i mod G, and the user message after it is unique. The G prefixes come from the
  run's base seed only, so every worker and every shard (`--shard`) sends the same G prefixes: a server
  with prefix caching sees G cacheable prefixes, whatever the number of load machines.
- Sessions (`--turns K`, `--think-time`): one session is K requests in a row on one slot; turn t sends the
  whole history (system prompt, earlier user messages and the replies the server really streamed back)
  plus a new user message, after the think time. A failed turn ends its session (the failure is counted).
- ShareGPT (`--dataset FILE` with `{"conversations": [{"from": "human", "value": ...}, ...]}` records, as a
  JSON array or one per line): the first human turn as the prompt, or with `--turns` the human turns as a
  session; `--dataset-output-lengths` asks for as many tokens as the recorded reply had.
- Lengths only (`--prompt-tokens lengths:FILE`, `--max-tokens lengths:FILE`): synthetic prompts whose
  lengths are drawn from the dataset's human (or gpt) turns.
- Exact lengths (`--tokenizer tokenizer.json`): synthetic text of exactly N tokens for that tokenizer
  (Hugging Face `tokenizers`); without it one common English word is one token (exact for Llama 3).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.prompts import _WORDS, Distribution, Prompt, PromptError

# Without a tokenizer a dataset text's token count is estimated at 4 characters a token (OpenAI's rule
# of thumb for English); give --tokenizer for the exact count.
CHARS_PER_TOKEN = 4
_HUMAN = {"human", "user"}
_ASSISTANT = {"gpt", "chatgpt", "bard", "bing", "assistant", "model"}


# ----------------------------------------------------------------------------------- token counts


class WordText:
    """One common English word per token: exact for Llama 3 (each word after the first is ' word')."""

    def make(self, rng: random.Random, tokens: int, lead: str = "") -> str:
        # The lead (a unique tag such as "[run-17]") takes about 6 tokens.
        words = rng.choices(_WORDS, k=max(0, tokens - (6 if lead else 0)))
        return " ".join(([lead] if lead else []) + words)

    def count(self, text: str) -> int:
        return math.ceil(len(text) / CHARS_PER_TOKEN)


class TokenizerText:
    """Text of exactly N tokens for a Hugging Face tokenizer.json (special tokens not counted)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise PromptError(
                "--tokenizer needs the `tokenizers` package: pip install tokenizers (or the project's [dev] extras)"
            ) from None
        try:
            self._tok = Tokenizer.from_file(self.path)
        except Exception as exc:  # tokenizers raises a bare Exception for a missing or bad file
            raise PromptError(
                f"--tokenizer {path}: not a Hugging Face tokenizer.json ({exc}); give the tokenizer.json of the "
                "served model"
            ) from None

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def make(self, rng: random.Random, tokens: int, lead: str = "") -> str:
        text = WordText().make(rng, tokens + 8, lead)
        for _ in range(64):
            ids = self._tok.encode(text, add_special_tokens=False).ids
            if len(ids) == tokens:
                return text
            if len(ids) > tokens:
                # Cut at the token boundary; decoding and encoding again can merge differently, so check again.
                cut = self._tok.decode(ids[:tokens])
                text = cut if cut != text else text.rsplit(" ", 1)[0]
            else:
                text = text + " " + rng.choice(_WORDS)
        raise PromptError(f"--tokenizer {self.path}: could not make a text of exactly {tokens} tokens")


def text_maker(tokenizer: str | None):
    return TokenizerText(tokenizer) if tokenizer else WordText()


# ----------------------------------------------------------------------------------- prompts, sessions


@dataclass(frozen=True)
class Turn:
    content: str
    prompt_tokens_target: int | None
    max_tokens: int


@dataclass(frozen=True)
class Session:
    """K turns sent one after another on one slot; `system` is sent first in every turn's history."""

    system: list
    turns: list
    think_time_s: float = 0.0
    group: int | None = None


def shared_prefix(seed: int, group: int, tokens: int, maker) -> str:
    """Group `group`'s system prompt: from the base seed only, so every worker and shard sends the same."""
    rng = random.Random(f"{seed}:shared-prefix:{group}")
    return maker.make(rng, tokens, f"[system prompt {group}]")


class WorkloadPrompts:
    """Synthetic prompts or sessions, with optional shared system prompts.

    get(i) -> Prompt (one turn) or Session (turns > 1). `tag` makes every user message unique (run, shard,
    worker, index), so nothing but the shared prefix can hit a prompt cache.
    """

    def __init__(self, input_tokens: Distribution, output_tokens: Distribution, seed: int, tag: str, *,
                 prefix_tokens: int = 0, prefix_groups: int = 1, turns: int = 1, think_time_s: float = 0.0,
                 tokenizer: str | None = None, base_seed: int | None = None):
        self._input, self._output = input_tokens, output_tokens
        self._rng = random.Random(f"{seed}:{tag}")
        self._tag = tag
        self._maker = text_maker(tokenizer)
        self.turns = turns
        self._think = think_time_s
        self._groups = max(1, prefix_groups)
        self._prefix_tokens = prefix_tokens
        base = seed if base_seed is None else base_seed
        self._prefixes = [shared_prefix(base, g, prefix_tokens, self._maker) for g in range(self._groups)] \
            if prefix_tokens else []

    def _turn(self, index: int, turn: int) -> Turn:
        n = self._input.sample(self._rng)
        lead = f"[{self._tag}-{index}]" if turn == 0 else f"[turn {turn + 1}]"
        return Turn(self._maker.make(self._rng, n, lead), n, self._output.sample(self._rng))

    def get(self, index: int):
        group = index % self._groups if self._prefixes else None
        system = [{"role": "system", "content": self._prefixes[group]}] if self._prefixes else []
        if self.turns <= 1:
            turn = self._turn(index, 0)
            target = turn.prompt_tokens_target + (self._prefix_tokens if system else 0)
            return Prompt(system + [{"role": "user", "content": turn.content}], target, turn.max_tokens)
        turns = [self._turn(index, t) for t in range(self.turns)]
        # Only the first turn's prompt length is known ahead: later ones hold the replies streamed back.
        first = turns[0]
        turns[0] = Turn(first.content, first.prompt_tokens_target + (self._prefix_tokens if system else 0),
                        first.max_tokens)
        turns[1:] = [Turn(t.content, None, t.max_tokens) for t in turns[1:]]
        return Session(system, turns, self._think, group)


# ----------------------------------------------------------------------------------- ShareGPT


@dataclass(frozen=True)
class Conversation:
    """One ShareGPT record: (role, text) pairs, roles "system", "user" or "assistant"."""

    where: str
    messages: list


def _records(path: Path) -> list[tuple[str, object]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PromptError(f"--dataset {path}: cannot read it ({exc.strerror})") from None
    stripped = data.lstrip()
    if stripped.startswith(b"["):
        try:
            items = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise PromptError(f"--dataset {path}: not valid JSON ({exc})") from None
        return [(f"--dataset {path} record {i}", item) for i, item in enumerate(items)]
    out = []
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((f"--dataset {path}:{number}", orjson.loads(line)))
        except orjson.JSONDecodeError as exc:
            raise PromptError(f"--dataset {path}:{number}: not valid JSON ({exc})") from None
    return out


def is_sharegpt(path: str | Path) -> bool:
    """True when the file's first record has a `conversations` list (ShareGPT); else the plain JSONL form."""
    records = _records(Path(path))
    return bool(records) and isinstance(records[0][1], dict) and "conversations" in records[0][1]


def load_sharegpt(path: str | Path) -> list[Conversation]:
    """Read ShareGPT records; conversations that do not start with a human turn are left out (as vLLM's
    bench does), anything malformed is an error naming the record."""
    path = Path(path)
    conversations = []
    records = _records(path)
    for where, obj in records:
        turns = obj.get("conversations") if isinstance(obj, dict) else None
        if not isinstance(turns, list):
            raise PromptError(f"{where}: expected a ShareGPT object with a 'conversations' list")
        messages = []
        for k, turn in enumerate(turns):
            if not (isinstance(turn, dict) and isinstance(turn.get("from"), str) and isinstance(turn.get("value"), str)):
                raise PromptError(f"{where} turn {k}: expected {{\"from\": \"human\"|\"gpt\", \"value\": \"text\"}}")
            who = turn["from"].lower()
            role = "user" if who in _HUMAN else "assistant" if who in _ASSISTANT else "system" if who == "system" else None
            if role is None:
                raise PromptError(f"{where} turn {k}: unknown speaker {turn['from']!r}; expected human, gpt or system")
            messages.append((role, turn["value"]))
        body = [m for m in messages if m[0] != "system"]
        if body and body[0][0] == "user" and body[0][1].strip():
            conversations.append(Conversation(where, messages))
    if not conversations:
        raise PromptError(f"--dataset {path}: no conversation starts with a human turn ({len(records)} records)")
    return conversations


def _reply_after(messages: list, index: int) -> str | None:
    nxt = messages[index + 1] if index + 1 < len(messages) else None
    return nxt[1] if nxt and nxt[0] == "assistant" else None


def sharegpt_items(conversations: list[Conversation], output_tokens: Distribution, seed: int, *, turns: int = 1,
                   output_lengths: bool = False, think_time_s: float = 0.0, counter=None) -> list:
    """Prompts (turns == 1: the first human turn) or Sessions (up to `turns` human turns each)."""
    rng = random.Random(f"{seed}:sharegpt")
    counter = counter or WordText()

    def max_tokens(messages: list, index: int) -> int:
        reply = _reply_after(messages, index) if output_lengths else None
        return max(1, counter.count(reply)) if reply else output_tokens.sample(rng)

    items = []
    for conv in conversations:
        system = [{"role": "system", "content": text} for role, text in conv.messages if role == "system" and text]
        users = [i for i, (role, _text) in enumerate(conv.messages) if role == "user"]
        if turns <= 1:
            i = users[0]
            text = conv.messages[i][1]
            items.append(Prompt(system + [{"role": "user", "content": text}], None, max_tokens(conv.messages, i)))
        else:
            chosen = [Turn(conv.messages[i][1], None, max_tokens(conv.messages, i)) for i in users[:turns]]
            items.append(Session(system, chosen, think_time_s))
    return items


def dataset_lengths(path: str | Path, which: str, counter) -> Distribution:
    """Token lengths of a ShareGPT file's human (`which="input"`) or gpt (`"output"`) turns, to sample from."""
    role = "user" if which == "input" else "assistant"
    values = tuple(
        max(1, counter.count(text)) for conv in load_sharegpt(path) for r, text in conv.messages if r == role and text
    )
    if not values:
        raise PromptError(f"lengths:{path}: no {'human' if role == 'user' else 'gpt'} turns to take lengths from")
    return Distribution("empirical", 0, 0, values)


class ItemPrompts:
    """Dataset items (Prompts or Sessions) in a seeded shuffled order; worker w of P takes every P-th item."""

    def __init__(self, items: list, seed: int, worker: int, workers: int):
        order = list(range(len(items)))
        random.Random(seed).shuffle(order)
        self._items, self._order = items, order
        self._worker, self._workers = worker, max(1, workers)

    def get(self, index: int):
        return self._items[self._order[(index * self._workers + self._worker) % len(self._order)]]


# ----------------------------------------------------------------------------------- replies


def reply_text(body: bytes) -> str:
    """The assistant's text in a streamed (SSE) or JSON chat reply, for the next turn's history."""
    parts: list[str] = []
    stripped = body.lstrip()
    if stripped.startswith(b"{"):
        try:
            obj = orjson.loads(body)
            return obj["choices"][0]["message"].get("content") or ""
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            return ""
    for line in body.splitlines():
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if not data or data == b"[DONE]":
            continue
        try:
            obj = orjson.loads(data)
            delta = obj["choices"][0].get("delta") or {}
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            continue
        if isinstance(delta.get("content"), str):
            parts.append(delta["content"])
    return "".join(parts)


# ----------------------------------------------------------------------------------- the factory


def make_prompts(p: dict, worker: int, workers: int):
    """The prompt source a worker uses, from the config's `prompts` section (see BenchConfig.worker_config)."""
    from bench.prompts import DatasetPrompts, load_dataset

    output = Distribution(*p["output"])
    turns = p.get("turns", 1)
    think = p.get("think_time_s", 0.0)
    if p["kind"] == "dataset":
        if is_sharegpt(p["path"]):
            counter = text_maker(p.get("tokenizer"))
            items = sharegpt_items(load_sharegpt(p["path"]), output, p["seed"], turns=turns,
                                   output_lengths=p.get("output_lengths", False), think_time_s=think, counter=counter)
            return ItemPrompts(items, p["seed"], worker, workers)
        return DatasetPrompts(load_dataset(p["path"], output, p["seed"]), p["seed"], worker, workers)
    return WorkloadPrompts(Distribution(*p["input"]), output, p["seed"], f"{p['tag']}.{worker}",
                           prefix_tokens=p.get("prefix_tokens", 0), prefix_groups=p.get("prefix_groups", 1),
                           turns=turns, think_time_s=think, tokenizer=p.get("tokenizer"),
                           base_seed=p.get("base_seed"))
