"""The bench's workload and shard flags, and their validation (kept here so bench.cli stays short)."""

from __future__ import annotations

import argparse

from bench.config import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    w = parser.add_argument_group("workloads (bench.workloads)")
    w.add_argument("--shared-prefix-tokens", type=int, default=0, metavar="N",
                   help="start every prompt with one of --prefix-groups system prompts of N tokens")
    w.add_argument("--prefix-groups", type=int, default=1, metavar="G", help="distinct shared prefixes (default 1)")
    w.add_argument("--turns", type=int, default=1, metavar="K",
                   help="multi-turn sessions of K requests, each resending the history; --requests and "
                   "--warmup then count sessions")
    w.add_argument("--think-time", default="0", help="pause between a session's turns, e.g. 2s (default 0)")
    w.add_argument("--tokenizer", metavar="tokenizer.json",
                   help="a Hugging Face tokenizer.json: synthetic prompts of exactly --prompt-tokens tokens")
    w.add_argument("--dataset-output-lengths", action="store_true",
                   help="ShareGPT --dataset: max_tokens = the recorded reply's length")
    s = parser.add_argument_group("load from many machines (bench.shard)")
    s.add_argument("--shard", metavar="I/N", help="run share I of N of the load (0 <= I < N); merge with `bench merge`")
    s.add_argument("--start-at", metavar="TIME",
                   help="start the first level at this wall-clock time (ISO 8601 with zone, or Unix seconds)")


def settings(args: argparse.Namespace, parse_duration) -> dict:
    """BenchConfig fields from the flags, `input_tokens`/`output_tokens` included (N, normal:..., uniform:...
    or lengths:FILE); also validates the dataset now, naming the file and line."""
    from bench import workloads
    from bench.prompts import Distribution, load_dataset
    from bench.shard import parse_shard, parse_start_at

    for flag, value, low in (("--shared-prefix-tokens", args.shared_prefix_tokens, 0),
                             ("--prefix-groups", args.prefix_groups, 1), ("--turns", args.turns, 1)):
        if value < low:
            raise UsageError(f"{flag} {value}: must be >= {low}")
    if args.prefix_groups > 1 and not args.shared_prefix_tokens:
        raise UsageError("--prefix-groups needs --shared-prefix-tokens N (the length of each shared prefix)")
    think = 0.0 if args.think_time.strip() in ("0", "0s") else parse_duration(args.think_time, "--think-time")
    if think and args.turns < 2:
        raise UsageError("--think-time is the pause between turns: give --turns K (K >= 2) with it")
    counter = workloads.text_maker(args.tokenizer)  # loads the tokenizer now: a bad file fails before any request
    tokens = {}
    for which, flag, text in (("input", "--prompt-tokens", args.prompt_tokens), ("output", "--max-tokens", args.max_tokens)):
        if text.strip().startswith("lengths:"):
            tokens[which] = workloads.dataset_lengths(text.strip()[len("lengths:"):], which, counter)
        else:
            tokens[which] = Distribution.parse(text, flag)
    input_tokens, output_tokens = tokens["input"], tokens["output"]
    if args.dataset:
        if workloads.is_sharegpt(args.dataset):
            workloads.load_sharegpt(args.dataset)
            if args.shared_prefix_tokens:
                raise UsageError("--shared-prefix-tokens makes synthetic prompts; a --dataset brings its own")
        else:
            load_dataset(args.dataset, output_tokens, args.seed)
            if args.turns > 1:
                raise UsageError("--turns with --dataset needs a ShareGPT file (a 'conversations' list per record)")
            if args.dataset_output_lengths:
                raise UsageError("--dataset-output-lengths reads ShareGPT replies; this dataset is plain JSONL")
    elif args.dataset_output_lengths:
        raise UsageError("--dataset-output-lengths needs a ShareGPT --dataset")
    shard = parse_shard(args.shard) if args.shard else (0, 1)
    start_at = parse_start_at(args.start_at) if args.start_at else None
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "shared_prefix_tokens": args.shared_prefix_tokens,
        "prefix_groups": args.prefix_groups,
        "turns": args.turns,
        "think_time_s": think,
        "tokenizer": args.tokenizer,
        "dataset_output_lengths": args.dataset_output_lengths,
        "shard": shard,
        "start_at": start_at,
    }
