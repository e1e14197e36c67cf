"""prefbench's benchmark command: one run re-makes every headline number; `report` turns the
committed results into the docs' tables.

Usage:
    python -m benchmarks run [--out benchmarks/results/<card>-<date>/] [--only inference,evaluate,train,t4_path]
    python -m benchmarks report [--check]

`run` (any CUDA machine after `make install ... EXTRAS=dev,gpu`; on a CPU it runs the same code on the
tiny models, for smoke tests) measures, for Llama3-8B, Gemma2-9B, Qwen2-7B and Mistral-7B (full-size
architectures, random-init weights, real arena lengths; `--models` picks others):
  inference  the bf16 matmul peak; per model the default path (what `dvc repro`'s evaluate runs on
             this card) and the padded path, logits checked against fp32 eager, and a profile of
             the default path by kernel category (benchmarks/inference.py)
  evaluate   the evaluate stage itself on the same rows: eval.json against the default cell
  train      the train stage itself: MFU over all steps and over the second half
             (benchmarks/pipeline.py), and a profile of its steps by kernel category
  t4_path    the Kaggle 2xT4 software path on this card (fp16, memory capped at 15 GB, no fused
             kernels, Gemma2 4-bit against Llama3 8-bit and 4-bit; benchmarks/t4_path.py)
The evaluate and train parts (and the fp8 cells) run for `--stage-models`, by default the first
two of the default models (Llama3-8B and Gemma2-9B): a full-size run costs minutes of GPU time.
into OUT: <part>.json, <part>.log, and headline.json + MANIFEST.md merged from every part there.

`report` renders the generated blocks of README.md and docs/*.md (`<!-- begin: NAME -->`) from the
newest results folder and the committed metrics; `--check` exits 1 if a committed file differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks import settings
from benchmarks.card import ROOT


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="measure the headline set into a results folder")
    run.add_argument("--out", type=Path, help="results folder (default: benchmarks/results/<card>-<date>, e.g. h100-2026-12-06)")
    run.add_argument("--only", default="inference,evaluate,train,t4_path",
                     help="parts to run, comma-separated (inference, evaluate, train, t4_path); merged with those already in OUT")
    run.add_argument("--models", help="folders under models/ for inference (default: "
                     f"{','.join(settings.MODELS)} on a GPU, {','.join(settings.TINY_MODELS)} on a CPU)")
    run.add_argument("--stage-models", help="folders under models/ for the evaluate and train parts and the "
                     "inference part's fp8 cells (default: the "
                     f"first {settings.TRAIN_FAMILIES} of the default models: "
                     f"{','.join(settings.MODELS[:settings.TRAIN_FAMILIES])} on a GPU, "
                     f"{','.join(settings.TINY_MODELS[:settings.TRAIN_FAMILIES])} on a CPU)")
    run.add_argument("--rows", type=int, help="inference and evaluate rows (default: 512 on a GPU, 12 on a CPU)")
    run.add_argument("--reps", type=int, default=3, help="timed passes per inference cell (median)")
    run.add_argument("--steps", type=int, help="train stage optimizer steps, at least (default: 200 on a GPU, 3 on a CPU)")
    run.add_argument("--t4-rows", type=int, help="rows of each t4_path cell (default: 256 on a GPU, 12 on a CPU)")
    report = sub.add_parser("report", help="render the docs' generated blocks from the committed results")
    report.add_argument("--results", type=Path, help="results folder (default: the newest under benchmarks/results)")
    report.add_argument("--check", action="store_true", help="exit 1 if a committed file differs from its rendering")
    args = parser.parse_args(argv)

    if args.command == "report":
        from benchmarks import report as rep
        return rep.main(args.results, args.check)

    from benchmarks import card, headline

    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in parts if p not in headline.PARTS]
    if unknown or not parts:
        parser.error(f"--only: unknown part(s) {unknown or parts}; choose from {', '.join(headline.PARTS)}")
    gpu = card.device().type == "cuda"
    defaults = settings.default_models(gpu)
    models = args.models.split(",") if args.models else list(defaults)
    stage_models = (args.stage_models.split(",") if args.stage_models
                    else list(defaults[:settings.TRAIN_FAMILIES]))
    for flag, names in (("--models", models), ("--stage-models", stage_models)):
        missing = [m for m in names if not (ROOT / "models" / m / "config.json").exists()]
        if missing:
            parser.error(f"{flag}: no models/{missing[0]}/config.json")
    rows = args.rows or (512 if gpu else 12)
    args.out = args.out or card.default_out(card.device())
    head = headline.run(args.out, [p for p in headline.PARTS if p in parts], models, rows, args.reps,
                        args.steps or (200 if gpu else 3), argv, stage_models=stage_models,
                        t4_rows=args.t4_rows or (256 if gpu else 12))
    print(f"wrote {args.out / 'headline.json'}" + (f"; not run: {len(head['not_run'])} (see MANIFEST.md)"
                                                    if head["not_run"] else ""))
    return 1 if head["not_run"] else 0


if __name__ == "__main__":
    sys.exit(main())
