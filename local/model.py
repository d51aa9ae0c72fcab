"""A real model without a model hub: a random-weight Llama-architecture GGUF with the real Llama vocab.

The weights are noise, so the text is gibberish, but llama-server does all the work a trained model of the
same shape costs: tokenizing with the 32,000-token Llama SentencePiece vocab, prefill, batched decode,
sampling. Throughput and latency depend on the shape, not on what the weights learned.

Two shapes: `tiny` (~4M parameters, for tests) and `small` (~20M, slower, closer to real pacing). The file
is a pure function of (size, seed): the same inputs give byte-identical files, cached under
`<cache>/models/`.

The output rows of the control tokens (<unk>, <s>, </s>) are zero while every other logit has a spread of
about 3, so sampling never picks end-of-sequence: each completion runs to its max_tokens, as a
benchmark wants (the same effect as `ignore_eos`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from local._sources import LocalSetupError, cache_root, llama_cpp_source_dir

# Bump when the writer changes what it writes, so cached files are rebuilt.
WRITER_VERSION = 1
VOCAB_FILE = "ggml-vocab-llama-spm.gguf"
LOGIT_SPREAD = 3.0
# Llama-2 chat format: the vocab's own [INST] markers, so /v1/chat/completions renders real token ids.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '[INST] <<SYS>>\\n' + message['content'] + '\\n<</SYS>>\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}{% endfor %}"
)
# Tokenizer fields copied verbatim from the vocab-only GGUF.
_TOKENIZER_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
)
_CONTROL_TOKEN_TYPES = {2, 3}  # gguf.TokenType.UNKNOWN, CONTROL


@dataclass(frozen=True)
class ModelShape:
    """Hyper-parameters of a Llama-architecture transformer."""

    name: str
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    context_length: int = 4096

    def __post_init__(self) -> None:
        for field_name in ("n_embd", "n_layer", "n_head", "n_head_kv", "n_ff", "context_length"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{field_name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.n_head % self.n_head_kv:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_head_kv ({self.n_head_kv})")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError(f"head dimension n_embd/n_head ({self.n_embd // self.n_head}) must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def parameter_count(self, n_vocab: int) -> int:
        kv = self.n_head_kv * self.head_dim
        per_layer = 2 * self.n_embd + 2 * self.n_embd * self.n_embd + 2 * self.n_embd * kv + 3 * self.n_embd * self.n_ff
        return 2 * n_vocab * self.n_embd + self.n_embd + self.n_layer * per_layer


SIZES: dict[str, ModelShape] = {
    "tiny": ModelShape("tiny", n_embd=64, n_layer=2, n_head=4, n_head_kv=4, n_ff=192),
    "small": ModelShape("small", n_embd=256, n_layer=4, n_head=8, n_head_kv=4, n_ff=768),
}


def shape_for(size: str) -> ModelShape:
    try:
        return SIZES[size]
    except KeyError:
        raise ValueError(f"unknown model size {size!r}; choose one of: {', '.join(SIZES)}") from None


def default_vocab_path() -> Path:
    return llama_cpp_source_dir() / "models" / VOCAB_FILE


def model_path(size: str, seed: int = 0, root: Path | None = None) -> Path:
    """Where the cached model for (size, seed) lives; the digest changes whenever its content would."""
    shape = shape_for(size)
    identity = repr((WRITER_VERSION, asdict(shape), seed, VOCAB_FILE, LOGIT_SPREAD, CHAT_TEMPLATE))
    digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
    return (root or cache_root()) / "models" / f"llama-random-{size}-seed{seed}-{digest}.gguf"


def ensure_model(size: str = "tiny", seed: int = 0, *, root: Path | None = None, vocab: Path | None = None) -> Path:
    """Return the cached random-weight model for (size, seed), writing it first if absent."""
    path = model_path(size, seed, root)
    if path.is_file():
        return path
    write_model(path, shape_for(size), seed=seed, vocab=vocab or default_vocab_path())
    return path


def write_model(path: Path, shape: ModelShape, *, seed: int, vocab: Path) -> None:
    """Write a random-weight Llama GGUF to `path` (atomically: readers never see half a file)."""
    import gguf  # the writer; imported here so reading paths stays light

    if not vocab.is_file():
        raise LocalSetupError(f"Vocab file {vocab} does not exist; it ships in the llama.cpp sources' models/.")
    reader = gguf.GGUFReader(vocab)
    fields = {key: reader.fields[key] for key in _TOKENIZER_KEYS if key in reader.fields}
    if "tokenizer.ggml.tokens" not in fields:
        raise LocalSetupError(f"{vocab} has no tokenizer.ggml.tokens: not a vocab GGUF")
    token_types = np.asarray(fields["tokenizer.ggml.token_type"].contents(), dtype=np.int32)
    n_vocab = len(token_types)

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    writer = gguf.GGUFWriter(partial, "llama")
    writer.add_name(f"llama-random-{shape.name}")
    writer.add_description(f"Random weights (seed {seed}) with the Llama SentencePiece vocab; for benchmarks.")
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for key, field in fields.items():
        _copy_field(writer, key, field)
    writer.add_chat_template(CHAT_TEMPLATE)

    for name, tensor in _random_tensors(shape, n_vocab, token_types, seed):
        writer.add_tensor(name, tensor)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    partial.replace(path)


def _copy_field(writer, key: str, field) -> None:
    import gguf

    value_type = field.types[0]
    if value_type == gguf.GGUFValueType.ARRAY:
        writer.add_key_value(key, field.contents(), value_type, sub_type=field.types[-1])
    else:
        writer.add_key_value(key, field.contents(), value_type)


def _random_tensors(shape: ModelShape, n_vocab: int, token_types: np.ndarray, seed: int):
    """Yield (name, array) in a fixed order from one seeded generator. numpy shape = (rows, cols), the
    reverse of GGUF's dims: token_embd (n_vocab, n_embd) is GGUF {n_embd, n_vocab}."""
    rng = np.random.default_rng(seed)
    e, kv, ff = shape.n_embd, shape.n_head_kv * shape.head_dim, shape.n_ff

    def matrix(rows: int, cols: int, std: float) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * std).astype(np.float16)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)  # llama.cpp wants norm weights in F32

    yield "token_embd.weight", matrix(n_vocab, e, 1.0)
    for layer in range(shape.n_layer):
        block = f"blk.{layer}"
        yield f"{block}.attn_norm.weight", ones(e)
        yield f"{block}.attn_q.weight", matrix(e, e, e**-0.5)
        yield f"{block}.attn_k.weight", matrix(kv, e, e**-0.5)
        yield f"{block}.attn_v.weight", matrix(kv, e, e**-0.5)
        yield f"{block}.attn_output.weight", matrix(e, e, e**-0.5 / shape.n_layer)
        yield f"{block}.ffn_norm.weight", ones(e)
        yield f"{block}.ffn_gate.weight", matrix(ff, e, e**-0.5)
        yield f"{block}.ffn_up.weight", matrix(ff, e, e**-0.5)
        yield f"{block}.ffn_down.weight", matrix(e, ff, ff**-0.5 / shape.n_layer)
    yield "output_norm.weight", ones(e)
    # Logit = normalized hidden (RMS 1) . row, so a row std of spread/sqrt(e) gives logits of std ~spread.
    output = matrix(n_vocab, e, LOGIT_SPREAD * e**-0.5)
    output[np.isin(token_types, list(_CONTROL_TOKEN_TYPES))] = 0
    yield "output.weight", output


def main(argv: list[str] | None = None) -> int:
    """`python -m local.model [tiny|small] [--seed N]`: write (or find) the model and print its path."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m local.model", description=main.__doc__)
    parser.add_argument("size", nargs="?", default="tiny", choices=sorted(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(ensure_model(args.size, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
