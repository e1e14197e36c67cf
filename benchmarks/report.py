"""Turn committed GPU benchmark results into the Markdown tables of README's "Why is Gemma2 slower?".

Usage: python -m benchmarks.report benchmarks/results/bench-llama3-8b-run1-bufcast.json \
           benchmarks/results/bench-gemma2-9b.json > benchmarks/results/report.md
Every number in that README section comes out of this script and the JSON files it reads.
"""

from __future__ import annotations

import argparse
import json

from transformers import AutoConfig

from prefbench.flops import forward_flops
from benchmarks.gpu_bench import ROOT

KAGGLE_ROWS = 25_000
T4_FP16_PEAK = 65e12  # NVIDIA T4 datasheet, fp16 tensor cores (dense); T4 has no bf16


def load(paths):
    runs = [json.loads(open(p).read()) for p in paths]
    cells = [dict(c, card=r["device"], peak=r["peak_bf16_flops"]) for r in runs for c in r["cells"]]
    train = [dict(c, card=r["device"]) for r in runs for c in r["train"]]
    models = {k: v for r in runs for k, v in r["models"].items()}
    return runs, cells, train, models


def find(cells, **kw):
    hits = [c for c in cells if all(c.get(k) == v for k, v in kw.items()) and not c.get("compiled")]
    return hits[0] if hits else None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+")
    args = p.parse_args()
    runs, cells, train, models = load(args.results)
    print("Runs: " + "; ".join(f"{r['device']}, {r['date']}, torch {r['versions']['torch']}, "
                               f"transformers {r['versions']['transformers']}, "
                               f"bf16 matmul peak {r['peak_bf16_flops'] / 1e12:.0f} TFLOP/s" for r in runs))
    print("\n| model | params total | embedding | non-embedding | layers | forward GFLOP/token at 600 tokens |")
    print("|---|---|---|---|---|---|")
    flops = {}
    for name, m in models.items():
        config = AutoConfig.from_pretrained(ROOT / "models" / name)
        flops[name] = forward_flops(config, m["params_non_embedding"], [600]) / 600
        print(f"| {name} | {m['params_total']:,} | {m['params_embedding']:,} | {m['params_non_embedding']:,} | "
              f"{m['layers']} | {flops[name] / 1e9:.1f} |")
    if len(flops) == 2:
        a, b = sorted(flops)
        print(f"\nFLOP ratio {a}/{b} per token: {flops[a] / flops[b]:.2f}")

    print("\nInference, bf16 unless noted, real arena length distribution (s/sample; MFU; peak GB; "
          "max relative logit error vs fp32 eager):\n")
    print("| model | max_length | attention | dtype | fixed padding | dynamic + sorted | speed-up | "
          "MFU dyn | mem GB | rel. error | softcap |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for c in cells:
        if c["batching"] != "dynamic":
            continue
        fixed = find(cells, model=c["model"], max_length=c["max_length"], attn=c["attn"], dtype=c["dtype"],
                     batching="fixed")
        f = f"{fixed['seconds_per_sample']:.4f}" if fixed else "-"
        speed = f"{fixed['seconds_per_sample'] / c['seconds_per_sample']:.2f}x" if fixed else "-"
        err = c.get("max_rel_error")
        print(f"| {c['model']} | {c['max_length']} | {c['attn']} | {c['dtype']} | {f} | "
              f"{c['seconds_per_sample']:.4f} | {speed} | {c['mfu']:.2f} | {c['peak_memory_gb']} | "
              f"{'-' if err is None else f'{err:.3f}'} | {'yes' if c.get('softcap_applied') else 'NO'} |")

    print("\nLoRA training step (r=16, all linear layers, AdamW):\n")
    print("| model | attention | batch | grad. checkpointing | s/step | tokens/s | MFU | peak GB |")
    print("|---|---|---|---|---|---|---|---|")
    for t in train:
        print(f"| {t['model']} | {t['attn']} | {t['batch']} | {t['gradient_checkpointing']} | "
              f"{t['seconds_per_step']:.3f} | {t['tokens_per_second']:.0f} | {t['mfu']:.2f} | {t['peak_memory_gb']} |")

    print(f"\nProjection for the hidden test set ({KAGGLE_ROWS:,} rows) at max_length 1024: measured on the "
          "card above; the T4 column scales by the ratio of bf16 peak to T4's fp16 peak at the same MFU "
          "(an optimistic floor: T4 runs at lower MFU), halved for 2xT4 with one model per GPU.\n")
    print("| model | path | minutes here | hours on 2xT4 (floor) |")
    print("|---|---|---|---|")
    for c in cells:
        if c["max_length"] != 1024:
            continue
        minutes = KAGGLE_ROWS * c["seconds_per_sample"] / 60
        t4_hours = minutes * c["peak"] / T4_FP16_PEAK / 2 / 60
        print(f"| {c['model']} | {c['attn']}, {c['dtype']}, {c['batching']} | {minutes:.1f} | {t4_hours:.2f} |")


if __name__ == "__main__":
    main()
