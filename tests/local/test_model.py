"""The random-weight Llama GGUF: what llama.cpp needs to load it, read back with gguf's own reader."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from local.model import SIZES, ModelShape, ensure_model, model_path, shape_for, write_model

TINY = SIZES["tiny"]


def write_vocab(path: Path, n_tokens: int = 300) -> Path:
    """A small SentencePiece-style vocab-only GGUF, laid out like llama.cpp's models/ggml-vocab-*.gguf."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"tok{i}" for i in range(n_tokens - 3)]
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 3 + [-float(i) for i in range(n_tokens - 3)])
    writer.add_token_types([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
                           + [gguf.TokenType.NORMAL] * (n_tokens - 3))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def vocab(tmp_path: Path) -> Path:
    return write_vocab(tmp_path / "vocab.gguf")


def field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def test_written_model_has_llama_metadata_and_the_vocab(tmp_path, vocab):
    path = tmp_path / "m.gguf"
    write_model(path, TINY, seed=0, vocab=vocab)
    reader = gguf.GGUFReader(path)

    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "llama.embedding_length") == TINY.n_embd
    assert field(reader, "llama.block_count") == TINY.n_layer
    assert field(reader, "llama.attention.head_count") == TINY.n_head
    assert field(reader, "llama.attention.head_count_kv") == TINY.n_head_kv
    assert field(reader, "llama.feed_forward_length") == TINY.n_ff
    assert field(reader, "llama.rope.dimension_count") == TINY.head_dim
    assert field(reader, "llama.vocab_size") == 300
    assert field(reader, "tokenizer.ggml.model") == "llama"
    assert field(reader, "tokenizer.ggml.tokens")[:4] == ["<unk>", "<s>", "</s>", "tok0"]
    assert field(reader, "tokenizer.ggml.eos_token_id") == 2
    assert "[INST]" in field(reader, "tokenizer.chat_template")


def test_tensors_have_llama_cpp_names_shapes_and_types(tmp_path, vocab):
    path = tmp_path / "m.gguf"
    write_model(path, TINY, seed=0, vocab=vocab)
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}

    e, ff, kv = TINY.n_embd, TINY.n_ff, TINY.n_head_kv * TINY.head_dim
    expected = {"token_embd.weight": (e, 300), "output_norm.weight": (e,), "output.weight": (e, 300)}
    for i in range(TINY.n_layer):
        expected |= {
            f"blk.{i}.attn_norm.weight": (e,), f"blk.{i}.attn_q.weight": (e, e), f"blk.{i}.attn_k.weight": (e, kv),
            f"blk.{i}.attn_v.weight": (e, kv), f"blk.{i}.attn_output.weight": (e, e),
            f"blk.{i}.ffn_norm.weight": (e,), f"blk.{i}.ffn_gate.weight": (e, ff),
            f"blk.{i}.ffn_up.weight": (e, ff), f"blk.{i}.ffn_down.weight": (ff, e),
        }
    # GGUF dims are listed fastest-first (ne0 = row length), as llama.cpp checks them.
    assert {name: tuple(int(d) for d in t.shape) for name, t in tensors.items()} == expected
    for name, tensor in tensors.items():
        want = gguf.GGMLQuantizationType.F32 if name.endswith("norm.weight") else gguf.GGMLQuantizationType.F16
        assert tensor.tensor_type == want, name


def test_control_tokens_can_never_be_sampled(tmp_path, vocab):
    path = tmp_path / "m.gguf"
    write_model(path, TINY, seed=0, vocab=vocab)
    output = next(t for t in gguf.GGUFReader(path).tensors if t.name == "output.weight")
    rows = np.asarray(output.data, dtype=np.float32).reshape(300, TINY.n_embd)
    assert not rows[:3].any(), "<unk>, <s>, </s> logits must be 0 (far below the others)"
    assert rows[3:].std() > 0.1


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path, vocab):
    a, b, c = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c.gguf"
    write_model(a, TINY, seed=7, vocab=vocab)
    write_model(b, TINY, seed=7, vocab=vocab)
    write_model(c, TINY, seed=8, vocab=vocab)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_ensure_model_writes_once_then_reuses_the_cache(tmp_path, vocab):
    first = ensure_model("tiny", seed=3, root=tmp_path, vocab=vocab)
    assert first == model_path("tiny", 3, tmp_path) and first.parent == tmp_path / "models"
    stamp = first.stat().st_mtime_ns
    assert ensure_model("tiny", seed=3, root=tmp_path, vocab=vocab).stat().st_mtime_ns == stamp
    assert not list(first.parent.glob(".*partial"))


def test_cache_names_differ_by_size_and_seed(tmp_path):
    names = {model_path(size, seed, tmp_path).name for size in SIZES for seed in (0, 1)}
    assert len(names) == 4


def test_small_is_about_twenty_million_parameters_and_bigger_than_tiny():
    assert 15e6 < SIZES["small"].parameter_count(32000) < 25e6
    assert SIZES["tiny"].parameter_count(32000) < SIZES["small"].parameter_count(32000)


def test_unknown_size_names_the_choices():
    with pytest.raises(ValueError, match="unknown model size 'huge'; choose one of: tiny, small"):
        shape_for("huge")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_embd": 65}, "multiple of n_head"),
        ({"n_head_kv": 3}, "multiple of n_head_kv"),
        ({"n_layer": 0}, "n_layer must be a positive integer"),
        ({"n_embd": 12, "n_head": 4}, "must be even for RoPE"),
    ],
)
def test_bad_shapes_are_refused(kwargs, message):
    base = {"name": "x", "n_embd": 64, "n_layer": 2, "n_head": 4, "n_head_kv": 4, "n_ff": 128}
    with pytest.raises(ValueError, match=message):
        ModelShape(**(base | kwargs))


def test_missing_vocab_file_is_a_clear_error(tmp_path):
    from local._sources import LocalSetupError

    with pytest.raises(LocalSetupError, match="does not exist"):
        write_model(tmp_path / "m.gguf", TINY, seed=0, vocab=tmp_path / "nope.gguf")
