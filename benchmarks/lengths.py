"""Derive the benchmark's length distribution from the real arena rows.

Usage: python -m benchmarks.lengths --csv ../shared/data/arena_train_sample.csv --out benchmarks/arena_lengths.json

The real Gemma2 / Llama3 tokenizers are not available offline, so token counts are estimated
from characters: prompt, response A and response B of each of the 999 real rows (turns joined
as the tokenize stage joins them), divided by CHARS_PER_TOKEN (about 4 characters per token for
English chat text with 128k-256k vocabularies). The estimates go through the pipeline's own
budget allocation (prefbench.tokenize.allocate_budget) at each max_length, plus BOS and the
three part markers, so the benchmark sees the lengths the tokenize stage would produce.
Only per-row counts are written: no text of the data leaves ../shared.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from prefbench.data import parse_frame, read_csv
from prefbench.tokenize import allocate_budget, join_turns

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
