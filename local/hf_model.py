"""A random-weight Llama 3 in Hugging Face format for vLLM, with the real Llama 3 tokenizer, built offline.

vLLM loads Hugging Face checkpoints (config.json + safetensors + tokenizer), not llama.cpp's GGUF, so the
local vLLM engine gets a model of its own: the Llama 3 architecture (128,256-token vocab, grouped-query
attention, RoPE theta 500,000) at a tiny size, weights from one seeded generator, and the real Llama 3 BPE
tokenizer converted from the vocab-only GGUF that the llama-cpp-python sdist ships
(`models/ggml-vocab-llama-bpe.gguf`). "Hello world, this is a test." tokenizes as Llama 3's own tokenizer
does, so prompt and completion token counts are the ones a real Llama 3 would report.

The output rows of the 256 special tokens (ids >= 128000) are zero while every other logit has a spread of
about 3, so sampling almost never picks an end-of-turn token: completions run to max_tokens, as a
benchmark wants.

The writer needs torch, transformers, safetensors and gguf, which live in the vLLM venv: the project venv
calls `ensure_hf_model()`, which runs `<vllm venv>/bin/python -m local.hf_model` once and caches the
directory under `<cache>/models/` (keyed on everything that shapes its content).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from local._sources import LocalSetupError, cache_root, llama_cpp_source_dir

# Bump when the writer changes what it writes, so cached models are rebuilt.
WRITER_VERSION = 1
VOCAB_FILE = "ggml-vocab-llama-bpe.gguf"
LOGIT_SPREAD = 3.0
FIRST_SPECIAL_TOKEN = 128000
BOS_TOKEN_ID = 128000  # <|begin_of_text|>
EOT_TOKEN_ID = 128009  # <|eot_id|>: Llama 3 Instruct ends a turn with it
EOS_TOKEN_IDS = (128001, 128008, 128009)  # as Llama 3.1 Instruct's generation_config.json lists them
# Llama 3's chat format; the vocab GGUF has no template of its own.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class HfShape:
    """Hyper-parameters of the Llama model. vLLM's CPU attention needs head_dim >= 32 (16 is refused)."""

    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    # 8192 so that the stacks' --max-model-len 8192 is accepted as is.
    max_position_embeddings: int = 8192

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def model_dir(seed: int = 0, shape: HfShape = HfShape(), root: Path | None = None) -> Path:
    identity = repr((WRITER_VERSION, asdict(shape), seed, VOCAB_FILE, LOGIT_SPREAD, CHAT_TEMPLATE, EOS_TOKEN_IDS))
    digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
    return (root or cache_root()) / "models" / f"llama3-random-hf-seed{seed}-{digest}"


def ensure_hf_model(python: Path, seed: int = 0, *, root: Path | None = None, log=print) -> Path:
    """The cached model directory, written first (by `python`, the vLLM venv's interpreter) if absent."""
    path = model_dir(seed, root=root)
    if (path / "config.json").is_file():
        return path
    vocab_dir = llama_cpp_source_dir(log=log) / "models"
    log(f"Writing a random-weight Llama 3 (Hugging Face format) to {path}")
    command = [str(python), "-m", "local.hf_model", "--out", str(path), "--seed", str(seed), "--vocab-dir", str(vocab_dir)]
    done = subprocess.run(command, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True)
    if done.returncode != 0 or not (path / "config.json").is_file():
        raise LocalSetupError(f"writing the vLLM model failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    return path


def config(shape: HfShape, vocab_size: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "head_dim": shape.head_dim,
        "max_position_embeddings": shape.max_position_embeddings,
        "vocab_size": vocab_size,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": BOS_TOKEN_ID,
        "eos_token_id": list(EOS_TOKEN_IDS),
        "torch_dtype": "bfloat16",
    }


def write_model(out: Path, *, seed: int, vocab_dir: Path, shape: HfShape = HfShape()) -> None:
    """Write the model directory atomically (runs in the vLLM venv)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    vocab = vocab_dir / VOCAB_FILE
    if not vocab.is_file():
        raise LocalSetupError(f"{vocab} does not exist; it ships in the llama.cpp sources' models/.")
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)

    tokenizer = AutoTokenizer.from_pretrained(str(vocab_dir), gguf_file=VOCAB_FILE)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.bos_token = tokenizer.convert_ids_to_tokens(BOS_TOKEN_ID)
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(EOT_TOKEN_ID)
    tokenizer.save_pretrained(str(partial))
    vocab_size = len(tokenizer)

    generator = torch.Generator().manual_seed(seed)
    e, ff = shape.hidden_size, shape.intermediate_size
    kv = shape.num_key_value_heads * shape.head_dim
    layers = shape.num_hidden_layers

    def matrix(rows: int, cols: int, std: float) -> torch.Tensor:
        return (torch.randn(rows, cols, generator=generator) * std).to(torch.bfloat16)

    def ones(n: int) -> torch.Tensor:
        return torch.ones(n, dtype=torch.bfloat16)

    tensors = {"model.embed_tokens.weight": matrix(vocab_size, e, 1.0)}
    for layer in range(layers):
        p = f"model.layers.{layer}"
        tensors[f"{p}.input_layernorm.weight"] = ones(e)
        tensors[f"{p}.self_attn.q_proj.weight"] = matrix(e, e, e**-0.5)
        tensors[f"{p}.self_attn.k_proj.weight"] = matrix(kv, e, e**-0.5)
        tensors[f"{p}.self_attn.v_proj.weight"] = matrix(kv, e, e**-0.5)
        tensors[f"{p}.self_attn.o_proj.weight"] = matrix(e, e, e**-0.5 / layers)
        tensors[f"{p}.post_attention_layernorm.weight"] = ones(e)
        tensors[f"{p}.mlp.gate_proj.weight"] = matrix(ff, e, e**-0.5)
        tensors[f"{p}.mlp.up_proj.weight"] = matrix(ff, e, e**-0.5)
        tensors[f"{p}.mlp.down_proj.weight"] = matrix(e, ff, ff**-0.5 / layers)
    tensors["model.norm.weight"] = ones(e)
    # Logit = normalized hidden (RMS 1) . row: a row std of spread/sqrt(e) gives logits of std ~spread.
    head = matrix(vocab_size, e, LOGIT_SPREAD * e**-0.5)
    head[FIRST_SPECIAL_TOKEN:] = 0
    tensors["lm_head.weight"] = head
    save_file(tensors, str(partial / "model.safetensors"), metadata={"format": "pt"})

    (partial / "config.json").write_text(json.dumps(config(shape, vocab_size), indent=2) + "\n")
    generation = {"bos_token_id": BOS_TOKEN_ID, "eos_token_id": list(EOS_TOKEN_IDS), "do_sample": True}
    (partial / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m local.hf_model", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    write_model(args.out, seed=args.seed, vocab_dir=args.vocab_dir)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
