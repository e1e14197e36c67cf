"""Derive the benchmark's length distribution from the real arena rows.

Usage: python -m benchmarks.lengths --csv ../shared/data/arena_train_sample.csv --out benchmarks/arena_lengths.json

The real Gemma2 / Llama3 tokenizers are not available offline, so token counts are estimated
from characters: prompt, response A and response B of each of the 999 real rows (turns joined
as the tokenize stage joins them), divided by CHARS_PER_TOKEN (about 4 characters per token for
English chat text with 128k-256k vocabularies). The estimates go through the pipeline's own
budget allocation (prefbench.tokenize.allocate_budget) at each max_length, plus BOS and the
three part markers, so the benchmark sees the lengths the tokenize stage would produce.
Only per-row counts are written: no text of the data leaves ../shared.

`bench_lengths` draws rows of these lengths for the benchmark, `bench_sequences` fills them with
random token ids (random-init weights: what is timed is the shapes, not the text).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from prefbench.data import parse_frame, read_csv
from prefbench.tokenize import allocate_budget, join_turns

ARENA_LENGTHS = Path(__file__).with_name("arena_lengths.json")
CHARS_PER_TOKEN = 4.0
OVERHEAD_TOKENS = 16  # BOS + the three part markers, about 5 tokens each


def part_chars(csv: str) -> list[list[int]]:
    rows, _ = parse_frame(read_csv(csv), csv)
    return [[len(join_turns(r[c])) for c in ("prompt", "response_a", "response_b")] for _, r in rows.iterrows()]


def token_lengths(chars: list[list[int]], max_length: int, prompt_share: float = 0.2) -> np.ndarray:
    budget = max_length - OVERHEAD_TOKENS
    out = []
    for parts in chars:
        tokens = [int(np.ceil(c / CHARS_PER_TOKEN)) for c in parts]
        out.append(OVERHEAD_TOKENS + sum(allocate_budget(tokens, budget, prompt_share)))
    return np.array(out)


def arena_rows() -> int:
    """How many real rows arena_lengths.json describes (the most a benchmark draws without replacement)."""
    return len(json.loads(ARENA_LENGTHS.read_text())["part_chars"])


def bench_lengths(rows: int, max_length: int, seed: int = 0) -> np.ndarray:
    """Token lengths of `rows` real arena rows (drawn without replacement; cycled past the file's
    rows) at max_length."""
    chars = json.loads(ARENA_LENGTHS.read_text())["part_chars"]
    rng = np.random.default_rng(seed)
    picked = np.concatenate([rng.permutation(len(chars)) for _ in range(-(-rows // len(chars)))])[:rows]
    return token_lengths([chars[i] for i in picked], max_length)


def bench_sequences(lengths, vocab: int, seed: int, avoid: tuple[int, ...] = ()) -> list[np.ndarray]:
    """Random token ids of the given lengths, well inside the vocabulary, never below 10 (the
    special tokens: pad, BOS, EOS) nor in `avoid` (a tokenizer's pad id): the classifier pools on
    the last non-pad token."""
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(10, min(vocab - 10, 100_000), int(n)) for n in lengths]
    for s in seqs:
        for bad in avoid:
            s[s == bad] = bad + 1
    return seqs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", default="../shared/data/arena_train_sample.csv")
    parser.add_argument("--out", default="benchmarks/arena_lengths.json")
    args = parser.parse_args()
    chars = part_chars(args.csv)
    summary = {}
    for max_length in (1024, 2048):
        lengths = token_lengths(chars, max_length)
        summary[str(max_length)] = {"mean": round(float(lengths.mean()), 1), "p50": float(np.median(lengths)),
                                    "p95": float(np.percentile(lengths, 95)),
                                    "share_at_max": round(float((lengths >= max_length).mean()), 3)}
    doc = {"source": "first 999 rows of the competition's train.csv (../shared/data)",
           "chars_per_token": CHARS_PER_TOKEN, "overhead_tokens": OVERHEAD_TOKENS,
           "summary": summary, "part_chars": chars}
    with open(args.out, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
