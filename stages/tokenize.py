"""Stage `tokenize`: encode the prepared rows with the selected model's own tokenizer.

Usage: python -m stages.tokenize --params params.yaml --prepared data/prepared \
           --out data/tokens --metrics metrics/tokens.json
Reads params: model, models.<model>.pretrained, models.<model>.max_length, tokenize.prompt_share
(`kind: tfidf`: models.<model>.{word_ngram_max, char_ngram_max, max_features, min_df}).
Writes train.arrow and val.arrow (id, label, input_ids; Arrow IPC, no pickle) and meta.json
(tokenizer, pad id, max_length). When most rows of a split are cut to max_length it warns, naming
models.<model>.max_length (tokens.json: rows_truncated per split, truncation_warning). DVC caches the folder per model, so switching models back
and forth restores it from the run cache instead of recomputing. For `kind: tfidf` the cache is
the fitted featuriser and the feature matrices of both splits (prefbench.tfidf).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from prefbench.cli import run
from prefbench.config import Params, by_kind, load_params
from prefbench.files import atomic_path
from prefbench.metrics import write_json
from prefbench.models import load_tokenizer
from prefbench.tokenize import encode_rows, length_stats, to_table, truncation_warning, write_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", required=True, help="folder with train.parquet and val.parquet")
    parser.add_argument("--out", required=True, help="folder for the token cache")
    parser.add_argument("--metrics", required=True, help="token-length statistics JSON")
    args = parser.parse_args()
    params = load_params(args.params)
    with atomic_path(args.out) as out:  # the folder whole or absent (prefbench.files)
        out.mkdir()
        metrics = by_kind(params.selected, llm=tokenize_llm, tfidf=tokenize_tfidf)(params, args.prepared, out)
    with atomic_path(args.metrics) as path:
        write_json(path, metrics)


def tokenize_tfidf(params: Params, prepared: str, out: Path) -> dict:
    """`kind: tfidf`: the baseline's features (prefbench.tfidf.tokenize)."""
    from prefbench import tfidf  # here, not at the top: LLM runs never import scikit-learn
    return tfidf.tokenize(params, prepared, out)


def tokenize_llm(params: Params, prepared: str, out: Path) -> dict:
    """The LLM's own tokenizer: train.arrow, val.arrow and meta.json in `out`; returns the metrics."""
    cfg = params.selected
    tok = load_tokenizer(cfg.pretrained)
    metrics = {"model": params.model, "tokenizer": cfg.pretrained, "max_length": cfg.max_length}
    for split in ("train", "val"):
        df = pd.read_parquet(Path(prepared) / f"{split}.parquet")
        seqs, truncated = encode_rows(tok, df["prompt"].tolist(), df["response_a"].tolist(),
                                      df["response_b"].tolist(), cfg.max_length, params.tokenize.prompt_share,
                                      key=f"models.{params.model}.max_length")
        write_table(to_table(df["id"].tolist(), df["label"].tolist(), seqs), out / f"{split}.arrow")
        metrics[split] = length_stats(np.array([len(s) for s in seqs]), truncated)
        print(f"tokenize {split}: {metrics[split]}")
    warning = truncation_warning({split: metrics[split] for split in ("train", "val")}, params.model, cfg.max_length)
    metrics["truncation_warning"] = warning is not None  # most rows of a split cut to max_length
    if warning:
        print(f"tokenize: {warning}", file=sys.stderr)
    meta = {"model": params.model, "pretrained": cfg.pretrained, "pad_token_id": tok.pad_token_id,
            "max_length": cfg.max_length}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return metrics


if __name__ == "__main__":
    run(main)
