"""Turn committed GPU results into the Markdown of README's "Why is Gemma2 slower?".

Usage (report.md; SECTION is the README's generated block):
    R=benchmarks/results
    SECTION="--default-path $R/default-path-h100.json --pipeline-eval $R/pipeline-eval-h100.json \
        --kernel-profile $R/profile-default-h100.json \
        --compiled $R/default-path-compile-h100.json $R/default-path-compile-nokernels-h100.json \
        --packed $R/packed-h100.json --pipeline-eval-packed $R/pipeline-eval-packed-h100.json"
    python -m benchmarks.report $SECTION --section          # the README block (a test compares them)
    python -m benchmarks.report $SECTION --main $R/bench-side-by-side-3.json \
        --runs $R/bench-side-by-side-2.json $R/bench-side-by-side-1.json \
               $R/bench-gemma2-9b.json $R/bench-llama3-8b-run1-bufcast.json \
        --profile $R/profile-1.json --multi $R/multi-gpu-b8/multi-gpu.json > $R/report.md
`--default-path` (benchmarks/default_path.py) is the side-by-side run of what `dvc repro` runs,
before and after, the goals are read from; `--main` is the older side-by-side grid (eager / sdpa,
fixed / dynamic padding, compiled) and `--runs` adds the other runs' cells (flex attention, 2048
tokens, NF4, LoRA). Every number in that README section comes out of this script and the JSON
files it reads.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformers import AutoConfig

from benchmarks.gpu_bench import ROOT
from prefbench.flops import forward_flops
from prefbench.models import resolve_attention

KAGGLE_ROWS = 25_000
T4_FP16_PEAK = 65e12  # NVIDIA T4 datasheet, fp16 tensor cores (dense); T4 has no bf16
FAMILY = {"llama3-8b": "llama", "gemma2-9b": "gemma2"}


def load(path: str) -> dict:
    run = json.loads(Path(path).read_text())
    run["name"] = Path(path).stem
    return run


def find(run: dict, **kw) -> dict | None:
    compiled = kw.pop("compiled", False)
    hits = [c for c in run["cells"] if all(c.get(k) == v for k, v in kw.items()) and bool(c.get("compiled")) == compiled]
    return hits[0] if hits else None


def header(run: dict) -> str:
    return (f"`{run['name']}`: {run['device']}, {run['date']}, torch {run['versions']['torch']}, transformers "
            f"{run['versions']['transformers']}, bf16 matmul peak {run['peak_bf16_flops'] / 1e12:.0f} TFLOP/s, "
            f"{run['rows']} rows")


def headline(run: dict) -> None:
    """Both models, one run: the pipeline's default path, compiled, and the naive loop."""
    names = ["llama3-8b", "gemma2-9b"]
    print(f"Side by side, one process on one card: {header(run)}; max_length 1024, bf16, real lengths; "
          "s/sample is the median of 3 timed passes after an untimed pass over every batch.\n")
    print("| | Llama3-8B | Gemma2-9B | Gemma2 / Llama3 |")
    print("|---|---|---|---|")
    m = run["models"]
    flops = {n: forward_flops(AutoConfig.from_pretrained(ROOT / "models" / n), m[n]["params_non_embedding"], [600]) / 600
             for n in names}
    rows = [("parameters (3-class classifier)", lambda n: f"{m[n]['params_total']:,}", m, "params_total"),
            ("non-embedding parameters", lambda n: f"{m[n]['params_non_embedding']:,}", m, "params_non_embedding"),
            ("layers", lambda n: f"{m[n]['layers']}", m, "layers")]
    for label, fmt, src, key in rows:
        print(f"| {label} | {fmt(names[0])} | {fmt(names[1])} | {src[names[1]][key] / src[names[0]][key]:.2f} |")
    print(f"| forward GFLOP/token (600 tokens, attention included) | {flops[names[0]] / 1e9:.1f} | "
          f"{flops[names[1]] / 1e9:.1f} | {flops[names[1]] / flops[names[0]]:.2f} |")
    paths = [("default path: attention auto, dynamic padding + sorted", {"batching": "dynamic"}, False),
             ("same, torch.compile", {"batching": "dynamic"}, True),
             ("fixed padding to 1024 (the naive loop), attention auto", {"batching": "fixed"}, False)]
    for label, kw, compiled in paths:
        cells = [find(run, model=n, attn=resolve_attention("auto", FAMILY[n]), dtype="bfloat16", max_length=1024,
                      compiled=compiled, **kw) for n in names]
        if None in cells:
            continue
        attn = " / ".join(c["attn"] for c in cells)
        print(f"| s/sample, {label} ({attn}) | {cells[0]['seconds_per_sample']:.4f} (MFU {cells[0]['mfu']:.2f}) | "
              f"{cells[1]['seconds_per_sample']:.4f} (MFU {cells[1]['mfu']:.2f}) | "
              f"**{cells[1]['seconds_per_sample'] / cells[0]['seconds_per_sample']:.2f}** |")


def cells_table(run: dict) -> None:
    print(f"\n{header(run)}\n")
    print("| model | max_length | attention | dtype | compiled | fixed padding | dynamic + sorted | speed-up | "
          "MFU dyn | mem GB | rel. error | softcap |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in run["cells"]:
        if c["batching"] != "dynamic":
            continue
        fixed = find(run, model=c["model"], max_length=c["max_length"], attn=c["attn"], dtype=c["dtype"],
                     batching="fixed", compiled=bool(c.get("compiled")))
        f = f"{fixed['seconds_per_sample']:.4f}" if fixed else "-"
        speed = f"{fixed['seconds_per_sample'] / c['seconds_per_sample']:.2f}x" if fixed else "-"
        err = c.get("max_rel_error")
        print(f"| {c['model']} | {c['max_length']} | {c['attn']} | {c['dtype']} | {'yes' if c.get('compiled') else 'no'} "
              f"| {f} | {c['seconds_per_sample']:.4f} | {speed} | {c['mfu']:.2f} | {c['peak_memory_gb']} | "
              f"{'-' if err is None else f'{err:.3f}'} | {'yes' if c.get('softcap_applied') else 'NO'} |")
    for c in run["train"]:
        if c is run["train"][0]:
            print("\n| LoRA (r=16, all linear, AdamW) | attention | batch | grad. checkpointing | s/step | tokens/s | "
                  "MFU | peak GB |")
            print("|---|---|---|---|---|---|---|---|")
        print(f"| {c['model']} | {c['attn']} | {c['batch']} | {c['gradient_checkpointing']} | "
              f"{c['seconds_per_step']:.3f} | {c['tokens_per_second']:.0f} | {c['mfu']:.2f} | {c['peak_memory_gb']} |")


def profile_table(prof: dict) -> None:
    print(f"\nWhere the time goes (`{Path(prof['name']).stem}`: torch.profiler, {prof['device']}, "
          f"{prof['paths'][0].get('rows')} rows, dynamic padding, bf16; device ms per sample by category, "
          "see benchmarks/profile_attention.py):\n")
    cats = ["gemm", "attn_fused", "attn_eager", "compiled", "norm_act", "other"]
    print("| model | attention | " + " | ".join(cats) + " | total |")
    print("|---|---|" + "---|" * len(cats) + "---|")
    for p in prof["paths"]:
        if "error" in p:
            print(f"| {p['model']} | {p['attn']} | {p['error']} |")
            continue
        ms = p["ms_per_sample"]
        print(f"| {p['model']} | {p['attn']} | " + " | ".join(f"{ms.get(k, 0):.2f}" for k in cats)
              + f" | {p['total_ms_per_sample']:.2f} |")


def projection(run: dict) -> None:
    print(f"\nProjection for the hidden test set ({KAGGLE_ROWS:,} rows) at max_length 1024, from `{run['name']}`; "
          "the 2xT4 column scales by the ratio of this card's bf16 peak to T4's fp16 peak (65 TFLOP/s) at the same "
          "MFU (an optimistic floor: T4 reaches lower MFU), halved for one model per GPU:\n")
    print("| model | path | minutes here | hours on 2xT4 (floor) |")
    print("|---|---|---|---|")
    for c in run["cells"]:
        if c["max_length"] != 1024 or c["dtype"] != "bfloat16":
            continue
        minutes = KAGGLE_ROWS * c["seconds_per_sample"] / 60
        t4_hours = minutes * run["peak_bf16_flops"] / T4_FP16_PEAK / 2 / 60
        path = f"{c['attn']}, {c['batching']}{', compiled' if c.get('compiled') else ''}"
        print(f"| {c['model']} | {path} | {minutes:.1f} | {t4_hours:.2f} |")


def multi_table(m: dict, name: str) -> None:
    n = str(m["gpus"])
    print(f"\nOne GPU vs {n} (`{name}`): the pipeline's stages, {m['model']} ({m['weights']}, "
          f"{m['dtype']}, {m['attn_implementation']}), {m['device']} x {n}, {m['train_rows']} training rows, "
          f"train_batch_size {m.get('train_batch_size', 8)}, {m['val_rows']} validation rows:\n")
    print(f"| | 1 GPU | {n} GPUs | |")
    print("|---|---|---|---|")
    print(f"| train: seconds | {m['train_seconds']['1']:.1f} | {m['train_seconds'][n]:.1f} | "
          f"{m['train_speedup']:.2f}x |")
    print(f"| train: final loss | {m['train_final_loss']['1']:.4f} | {m['train_final_loss'][n]:.4f} | |")
    e = m["eval_seconds_per_sample"]
    print(f"| evaluate: s/sample (wall) | {e['1']:.5f} | {e[n]:.5f} | {m['eval_speedup']:.2f}x |")
    ll = m["eval_log_loss_same_adapter"]
    print(f"| evaluate: log-loss, same adapter | {ll['1']:.6f} | {ll[n]:.6f} | max prob. difference "
          f"{m['eval_max_abs_prob_diff_same_adapter']:.3f} |")
    print(f"| log-loss of the adapter trained on 1 / {n} GPUs (evaluated on 1) | {ll['1']:.6f} | "
          f"{m['eval_log_loss_ddp_adapter_on_1']:.6f} | |")


GOAL_MFU, GOAL_RATIO, GOAL_EVAL = 0.70, 1.25, 0.05  # issue 10's goals


def mfu_pair(c: dict) -> str:
    sheet = f" / {c['mfu_datasheet']:.2f}" if c.get("mfu_datasheet") else ""
    return f"{c['seconds_per_sample']:.4f} (MFU {c['mfu']:.2f}{sheet})"


def default_path(run: dict, evals: dict | None = None) -> None:
    """benchmarks/default_path.py: the path dvc repro runs, before and after, side by side; with
    benchmarks/pipeline_eval.py's eval.json numbers on the same rows and card when given."""
    m = run["models"]
    names = sorted(m, key=lambda n: m[n]["family"] == "gemma2")  # Llama3 first: ratios are Gemma2 / Llama3
    sheet = run.get("peak_bf16_flops_datasheet")
    print(f"`{run['name']}`: {run['device']}, {run['date']}, torch {run['versions']['torch']}, transformers "
          f"{run['versions']['transformers']}, flash-attn-4 {run['versions'].get('flash-attn-4')}, liger-kernel "
          f"{run['versions'].get('liger-kernel')}; {run['rows']} real-length rows at max_length {run['max_length']}, "
          f"batch {run['batch_size']}, padded to {run['pad_multiple']}; MFU against the bf16 matmul peak measured in "
          f"the run ({run['peak_bf16_flops'] / 1e12:.0f} TFLOP/s)"
          + (f" / the datasheet's dense bf16 peak ({sheet / 1e12:.0f} TFLOP/s)" if sheet else "") + ".\n")
    before = {n: next((c for c in run["cells"] if c["model"] == n and c["adapter"] == "unmerged"), None) for n in names}
    after = {n: next((c for c in run["cells"] if c["model"] == n and c.get("path") == "default"), None) for n in names}
    print("| s/sample (MFU) | " + " | ".join(names) + " | Gemma2 / Llama3 |")
    print("|---|" + "---|" * len(names) + "---|")

    def row(label, cells, key="seconds_per_sample", fmt=mfu_pair):
        if any(c is None or c.get(key) is None for c in cells.values()):
            return
        ratio = f"**{cells[names[1]][key] / cells[names[0]][key]:.2f}**" if len(cells) == 2 else "-"
        print(f"| {label} | " + " | ".join(fmt(c) for c in cells.values()) + f" | {ratio} |")

    legacy = " / ".join(m[n]["legacy_attn"] for n in names)
    row(f"before, as eval.json timed it ({legacy}, LoRA unmerged, 1 warm-up batch)", before,
        "seconds_per_sample_old_warmup", lambda c: f"{c['seconds_per_sample_old_warmup']:.4f}")
    row(f"before, steady state ({legacy}, LoRA unmerged)", before)
    if all(after.values()):
        label = " / ".join(f"{c['attn']} + {c['kernels']}" for c in after.values())
        row(f"**after: the default path** ({label}, LoRA merged)", after)
    if evals:
        ev = {n: evals["models"].get(n, {}) for n in names}
        if all("eval_over_bench" in e for e in ev.values()):
            print("| eval.json seconds_per_sample, the evaluate stage on the same rows (`" + evals["name"] + "`) | "
                  + " | ".join(f"{e['eval']['seconds_per_sample']:.4f} ({e['eval_over_bench']:.3f}x the benchmark)"
                               for e in ev.values()) + " | - |")
    print("\nEvery cell (bf16; errors against fp32 eager on the same weights and 8 real-length rows: max |diff| / "
          "max |ref| and ||diff|| / ||ref||; `pipeline pass` is the first timed pass after the pipeline's "
          "warm-up, what eval.json reports):\n")
    print("| model | attention | kernels | LoRA | default | s/sample | pipeline pass | MFU | MFU datasheet | "
          "max rel. err | rel. L2 err | peak GB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in run["cells"]:
        sheet_mfu = f"{c['mfu_datasheet']:.2f}" if c.get("mfu_datasheet") else "-"
        print(f"| {c['model']} | {c['attn']} | {c['kernels']} | {c['adapter']} | {'yes' if c.get('path') else ''} | "
              f"{c['seconds_per_sample']:.4f} | {c['seconds_per_sample_pipeline']:.4f} | {c['mfu']:.2f} | {sheet_mfu} | "
              f"{c['max_rel_error']:.4f} | {c['rel_l2_error']:.4f} | {c['peak_memory_gb']} |")
    for c in run["train"]:
        if c is run["train"][0]:
            print("\n| LoRA training (r=16, default path) | attention | kernels | batch | s/step | tokens/s | MFU | "
                  "MFU datasheet | final loss | peak GB |")
            print("|---|---|---|---|---|---|---|---|---|---|")
        sheet_mfu = f"{c['mfu_datasheet']:.2f}" if c.get("mfu_datasheet") else "-"
        print(f"| {c['model']} | {c['attn']} | {c['kernels']} | {c['batch']} | {c['seconds_per_step']:.3f} | "
              f"{c['tokens_per_second']:.0f} | {c['mfu']:.2f} | {sheet_mfu} | {c['final_loss']:.3f} | "
              f"{c['peak_memory_gb']} |")
    for s in run["skipped"]:
        if s is run["skipped"][0]:
            print("\nNot measured:\n")
        tags = ", ".join(f"{k} {v}" for k, v in s.items() if k != "reason")
        print(f"- {tags}: {s['reason'][:200]}")
    goals(after, names, evals)


def compile_table(runs: list[dict]) -> None:
    """default_path.py --only-default --compile: the default cell, then the same model compiled
    (recompiles in the timed passes raise), with the break-even row count."""
    print("\n`compile: true` on top (timed passes with `torch._dynamo.config.error_on_recompile`; warm-up = "
          "one batch per padded shape, compiling; break-even = extra warm-up seconds / seconds saved per row):\n")
    print("| run | model | attention + kernels | uncompiled s/sample | compiled s/sample | warm-up s uncompiled / "
          "compiled | break-even rows |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        for c in run["cells"]:
            if not c.get("compiled"):
                continue
            plain = next(p for p in run["cells"] if p["model"] == c["model"] and not p.get("compiled"))
            be = c.get("break_even_rows")
            print(f"| `{run['name']}` | {c['model']} | {c['attn']} + {c['kernels']} | {plain['seconds_per_sample']:.4f} | "
                  f"{c['seconds_per_sample']:.4f} | {plain['warmup_seconds']:.0f} / {c['warmup_seconds']:.0f} | "
                  f"{be if be is not None else 'never (no gain)'} |")


def kernel_profile_table(prof: dict, run: dict) -> None:
    """profile_attention.py with GPU-kernel categories: where the default path's device time goes.
    `run` (default_path.py, same card kind) gives parameter counts and the measured matmul peak."""
    print(f"\nWhere the default path's time goes (`{prof['name']}`: torch.profiler, {prof['device']}, "
          f"{prof['paths'][0].get('rows')} rows, device ms per sample by GPU kernel name; matmul efficiency = "
          "2 x non-embedding parameters x real tokens over the matmul kernels' time, against the peak measured in "
          f"`{run['name']}`; padding = padded tokens the matmuls also compute):\n")
    cats = ["gemm", "attn_fused", "liger", "norm_act", "other"]
    print("| model | path | " + " | ".join(cats) + " | total | matmul share | matmul efficiency | padding |")
    print("|---|---|" + "---|" * len(cats) + "---|---|---|---|")
    for p in prof["paths"]:
        if "error" in p:
            continue
        ms = p["kernel_ms_per_sample"]
        total = sum(ms.values())
        n = run["models"][p["model"]]["params_non_embedding"]
        eff = 2 * n * p["tokens"] / p["rows"] / (ms["gemm"] / 1e3) / run["peak_bf16_flops"]
        print(f"| {p['model']} | {p['attn']} + {p.get('kernels', 'none')} | "
              + " | ".join(f"{ms.get(k, 0):.2f}" for k in cats) + f" | {total:.2f} | {ms.get('gemm', 0) / total:.0%} | "
              f"{eff:.2f} | {1 - p['tokens'] / p['padded_tokens']:.1%} |")


def speed_goals(cells: dict, names: list[str]) -> None:
    """Issue 10's MFU and Gemma2 / Llama3 goals for one cell per model, met or missed by how much."""
    for n, c in cells.items():
        verdict = "met" if c["mfu"] >= GOAL_MFU else f"missed by {GOAL_MFU - c['mfu']:.2f}"
        print(f"- {n}: MFU {c['mfu']:.2f} against the measured peak (goal >= {GOAL_MFU:.2f}: {verdict})")
    ratio = cells[names[1]]["seconds_per_sample"] / cells[names[0]]["seconds_per_sample"]
    verdict = "met" if ratio <= GOAL_RATIO else f"missed by {ratio - GOAL_RATIO:.2f}"
    print(f"- Gemma2 / Llama3: {ratio:.2f} (goal <= {GOAL_RATIO}: {verdict}; FLOP ratio 1.19)")


def goals(after: dict, names: list[str], evals: dict | None) -> None:
    """Issue 10's goals on the default path, met or missed by how much."""
    if not all(after.values()) or len(after) != 2:
        return
    print("\nGoals (issue 10) on the default path:\n")
    speed_goals(after, names)
    for n, e in (evals or {}).get("models", {}).items():
        if "eval_over_bench" in e:
            off = abs(e["eval_over_bench"] - 1)
            print(f"- {n}: eval.json s/sample {e['eval_over_bench']:.3f}x the benchmark's steady state "
                  f"(goal within {GOAL_EVAL:.0%}: {'met' if off <= GOAL_EVAL else f'missed by {off - GOAL_EVAL:.1%}'})")


def packed_path(run: dict, budget: int = 16384, evals: dict | None = None) -> None:
    """benchmarks/packed.py: padded batches against packed forwards (prefbench.packing) on one card,
    both models in one process; the packed cell at `budget` tokens is what `packing: auto` runs
    with flash-attn-4 (models.<name>.token_budget), Gemma2's with its unreachable window off.
    `evals`: benchmarks/pipeline_eval.py run on packed.py's JSON (its own run, same rows and card):
    eval.json's seconds_per_sample against that run's packed cell, and issue 10's 5% goal."""
    names = sorted(run["models"], key=lambda n: n.startswith("gemma"))
    v = run["versions"]
    print(f"\nPacked inference (`benchmarks/packed.py`, `packed-h100`): {run['device']}, {run['date']}, torch "
          f"{v['torch']}, transformers {v['transformers']}, flash-attn-4 {v.get('flash-attn-4')}, liger-kernel "
          f"{v.get('liger-kernel')}; {run['rows']} real-length rows at max_length {run['max_length']}; flash_attention_4 "
          f"+ Liger; MFU against the measured bf16 matmul peak ({run['peak_bf16_flops'] / 1e12:.0f} TFLOP/s) / the "
          f"datasheet's ({run['peak_bf16_flops_datasheet'] / 1e12:.0f}).\n")
    print("| layout | " + " | ".join(f"{n} s/sample (MFU)" for n in names) + " | padding | Gemma2 / Llama3 |")
    print("|---|" + "---|" * len(names) + "---|---|")

    def cell(n, layout, size):
        key = "batch_size" if layout == "padded" else "token_budget"
        found = [c for c in run["cells"] if c["model"] == n and c["layout"] == layout and c[key] == size]
        return max(found, key=lambda c: c["window_off"]) if found else None  # the window-off cell: packing.py's

    rows = [("padded", b) for b in sorted({c["batch_size"] for c in run["cells"] if c["layout"] == "padded"})]
    rows += [("packed", b) for b in sorted({c["token_budget"] for c in run["cells"] if c["layout"] == "packed"})]
    chosen = {}
    for layout, size in rows:
        cells = {n: cell(n, layout, size) for n in names}
        if not all(cells.values()):
            continue
        label = f"padded, batch {size}" if layout == "padded" else f"packed, {size} tokens"
        if layout == "packed" and size == budget:
            label, chosen = f"**{label} (`packing: auto`)**", cells
        ratio = cells[names[1]]["seconds_per_sample"] / cells[names[0]]["seconds_per_sample"]
        print(f"| {label} | " + " | ".join(mfu_pair(c) for c in cells.values())
              + f" | {cells[names[0]]['padding_share']:.1%} | {ratio:.2f} |")
    if chosen:
        print("\nGoals (issue 10) with `packing: auto` (packed, "
              f"{budget} tokens; Gemma2's window off where no row reaches it):\n")
        speed_goals(chosen, names)
        for chk in run.get("checks", []):
            pv = chk["packed_vs_padded"]
            print(f"- {chk['model']}: packed vs padded logits ({chk['dtype']}, {chk['attn']}, {chk['rows']} rows): "
                  f"max rel. error {pv['max_rel_error']:.1e}")
    ev = {n: e for n, e in (evals or {}).get("models", {}).items() if "eval_over_bench" in e}
    if ev:
        print(f"\nThe evaluate stage with the repo's defaults (`packing: auto`) on the same rows and card "
              f"(`{evals['name']}`: benchmarks/pipeline_eval.py after benchmarks/packed.py in one call, "
              f"{evals['device']}):\n")
        for n, e in ev.items():
            off = abs(e["eval_over_bench"] - 1)
            verdict = "met" if off <= GOAL_EVAL else f"missed by {off - GOAL_EVAL:.1%}"
            print(f"- {n}: eval.json {e['eval']['seconds_per_sample']:.4f} s/sample (packed "
                  f"{str(e['eval'].get('packed')).lower()}, {e['eval']['attn_implementation']} + "
                  f"{e['eval']['kernels']}) against the benchmark's packed {e.get('bench_token_budget')}-token cell "
                  f"{e['bench_seconds_per_sample']:.4f}: {e['eval_over_bench']:.3f}x (goal within {GOAL_EVAL:.0%}: "
                  f"{verdict})")


def multi_packed_rows(results: Path) -> list[str]:
    """README "Several GPUs": the rows of the 1-GPU-against-2 table of the packed path, from
    `gpu_fused.sh multi-eval` / `multi-train` (multi-eval-h100.<model>.json: pipeline_eval.py
    --devices 1,2; multi-train-h100.*.json: pipeline_train.py --devices N, keyed model:budget:gc:devices)."""
    rows = []
    for name, label in (("llama3-8b", "Llama3-8B"), ("gemma2-9b", "Gemma2-9B")):
        e = json.loads((results / f"multi-eval-h100.{name}.json").read_text())["models"][name]
        one, two = e["by_devices"]["1"], e["by_devices"]["2"]
        assert e["same_log_loss"]["2"], f"{name}: 2 GPUs gave another log-loss"
        rows.append(f"| evaluate {label}, {one['n_samples']} rows: s/sample (wall) | {one['seconds_per_sample']:.5f} | "
                    f"{two['seconds_per_sample']:.5f} | {e['speedup']['2']:.2f}x |")
    train = {}
    for path in sorted(results.glob("multi-train-h100.*.json")):
        train.update(json.loads(path.read_text())["models"])

    def rate(t: dict) -> str:
        return f"{t['tokens_per_second']:,.0f} ({t['steady_tokens_per_second']:,.0f})"

    def ratio(a: dict, b: dict) -> str:
        return (f"{b['tokens_per_second'] / a['tokens_per_second']:.2f}x "
                f"({b['steady_tokens_per_second'] / a['steady_tokens_per_second']:.2f}x)")

    for label, one, two, what in (
            ("Llama3-8B", "llama3-8b:8192:nogc:1", "llama3-8b:16384:nogc:2", "8192 tokens a GPU"),
            ("Llama3-8B", "llama3-8b:8192:nogc:1", "llama3-8b:8192:nogc:2", "the same global batch, 8192 tokens"),
            ("Gemma2-9B", "gemma2-9b:32768:gc:1", "gemma2-9b:65536:gc:2", "32768 tokens a GPU, checkpointing")):
        a, b = train[one], train[two]
        rows.append(f"| train {label}, {what}: tokens/s | {rate(a)} | {rate(b)} | {ratio(a, b)} |")
    kept = [("llama3-8b:8192:nogc:1", "llama3-8b:16384:nogc:2"), ("gemma2-9b:32768:gc:1", "gemma2-9b:65536:gc:2")]
    mfus = [" / ".join(f"{train[k]['mfu']:.2f} ({train[k]['steady_mfu']:.2f})" for k in col) for col in zip(*kept)]
    rows.append(f"| train MFU per GPU, Llama3 / Gemma2 (a GPU's share kept) | {mfus[0]} | {mfus[1]} | |")
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--main", help="side-by-side run: both models in one process")
    p.add_argument("--runs", nargs="*", default=[])
    p.add_argument("--profile")
    p.add_argument("--multi", nargs="*", default=[])
    p.add_argument("--default-path", help="benchmarks/default_path.py's JSON: printed first")
    p.add_argument("--pipeline-eval", help="benchmarks/pipeline_eval.py's JSON for the same card")
    p.add_argument("--compiled", nargs="*", default=[], help="default_path.py --compile runs")
    p.add_argument("--kernel-profile", help="profile_attention.py run of the default path")
    p.add_argument("--packed", help="benchmarks/packed.py's JSON: padded against packed, after the default path")
    p.add_argument("--pipeline-eval-packed", help="benchmarks/pipeline_eval.py's JSON on packed.py's rows (same card; "
                   "printed with --packed)")
    p.add_argument("--section", action="store_true", help="only the default-path section (README)")
    args = p.parse_args()
    if args.default_path:
        if not args.section:
            print("## The default path (what `dvc repro` runs), before and after\n")
        default_path(load(args.default_path), load(args.pipeline_eval) if args.pipeline_eval else None)
        if args.kernel_profile:
            kernel_profile_table(load(args.kernel_profile), load(args.default_path))
        if args.compiled:
            compile_table([load(r) for r in args.compiled])
        if args.packed:
            packed_path(load(args.packed), evals=load(args.pipeline_eval_packed) if args.pipeline_eval_packed else None)
        if args.section:
            return
        print()
    main_run = load(args.main)
    headline(main_run)
    print("\n## Every cell, by run")
    for run in [main_run] + [load(r) for r in args.runs]:
        cells_table(run)
    if args.profile:
        profile_table(load(args.profile))
    projection(main_run)
    for path in args.multi:
        multi_table(json.loads(Path(path).read_text()), str(Path(path).parent.name))


if __name__ == "__main__":
    main()
