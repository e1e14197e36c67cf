"""Padded vs packed (padding-free) inference, side by side, one process, one card.

Usage (GPU; benchmarks/README.md has the commands for a GPU machine without network):
    python -m benchmarks.packed --out packed.json [--rows 256] [--max-length 1024] [--batches 16,32] \
        [--budgets 8192,16384,32768] [--reps 3]
On a CPU (a smoke run of the same code with the tiny models; flash-attn-4 and Liger are skipped):
    python -m benchmarks.packed --out /tmp/p.json --models tiny-llama3,tiny-gemma2 --rows 12 \
        --max-length 128 --batches 4 --budgets 256 --check-budget 256

Per model (full-size architecture, random-init weights; token lengths of real arena rows,
benchmarks/arena_lengths.json, as default_path.py):
  1. fp32 eager on 16 of the timed rows (spread over the lengths), padded (prefbench.infer.predict)
     and packed (prefbench.packing, packs > 4096 tokens): the reference, and the packed path checked
     against it where rounding is small.
  2. bf16 on the attention and kernels `auto` resolves to here (flash_attention_4 + Liger on Hopper
     where installed; sdpa / eager and no kernels elsewhere):
       padded: prefbench.infer.predict, length-sorted batches of --batches rows, padded to 64,
               one untimed batch per padded shape (the pipeline's warm-up), then --reps passes
       packed: prefbench.packing.predict_packed at each --budgets token budget, --reps passes
       (--window-kept) a packed cell with Gemma2's sliding window handed to flash-attention on packs
               > 4096 tokens (its local kernel), as transformers does without
               prefbench.packing.unreachable_window_off: the diagnostic behind that function
     Each cell's logits: against fp32 eager on the 16 rows, and against the padded cell's on all rows.
MFU = model FLOPs of the real tokens (prefbench/flops.py) / median seconds / peak, against the bf16
matmul peak measured here and the datasheet's dense bf16 figure (H100 / H200 SXM: 989 TFLOP/s).
Results are written after every cell, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from benchmarks import default_path
from benchmarks.default_path import bench_lengths, bench_sequences, errors
from benchmarks.gpu_bench import ROOT, cast_parameters_
from prefbench.flops import forward_flops, mfu
from prefbench.batching import GPU_PAD_MULTIPLE as PAD_MULTIPLE  # as evaluate and predict pad on a GPU
from prefbench.infer import predict
from prefbench.models import apply_kernels, count_parameters, label_config_kwargs, resolve_attention, resolve_kernels
from prefbench.packing import predict_packed

CHECK_ROWS = 16  # timed rows also checked against fp32 eager


class Run(default_path.Run):
    """default_path.Run's bookkeeping (the result file, skips, each model's share of the time budget,
    the loop over models) with this benchmark's cells (`suite`)."""

    def __init__(self, args):
        args.batch = None  # default_path's single batch size: here every padded cell has its own
        super().__init__(args)
        for key in ("batch_size", "train"):
            del self.r[key]
        self.r["checks"] = []
        self.r["notes"] = ["random-init weights: timings are real, logits are not a trained model's",
                           "seconds: median of the timed passes; padded cells warm every padded shape first "
                           "(prefbench.infer.predict warmup_shapes), packed cells the largest and smallest pack "
                           "and both length classes mod 16 (prefbench.packing.warmup_packs)",
                           "computed_tokens: tokens the forwards compute (padding included); MFU counts real "
                           "tokens only"]

    def suite(self, name: str):
        a, dev = self.args, self.dev
        config = AutoConfig.from_pretrained(ROOT / "models" / name, **label_config_kwargs())
        config.pad_token_id = 0  # bench_sequences never draws 0
        torch.manual_seed(0)
        with torch.device(dev):
            model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32,
                                                                   attn_implementation="eager").eval()
        counts = count_parameters(model)
        attn = resolve_attention("auto", config.model_type, dev.type, self.capability)
        kernels = resolve_kernels("auto", dev.type, self.capability)
        lengths = bench_lengths(a.rows, a.max_length)
        seqs = bench_sequences(lengths, config.vocab_size, seed=2)
        # Checked rows: CHECK_ROWS of the timed rows, spread over the lengths, so they sit in every kind
        # of pack (packs of > 4096 tokens: where transformers would hand FA4 Gemma2's window).
        picked = np.argsort(lengths, kind="stable")[:: max(1, len(seqs) // CHECK_ROWS)][:CHECK_ROWS]
        check = [seqs[i] for i in picked]
        self.r["models"][name] = {**counts, "family": config.model_type, "attn": attn, "kernels": kernels,
                                  "tokens": int(lengths.sum()), "mean_length": float(lengths.mean())}
        flops = forward_flops(config, counts["params_non_embedding"], lengths)

        # 1. fp32 eager: the reference, and packed vs padded where rounding is small.
        ref = predict(model, check, 8, 0, dev, warmup_batches=0, pad_multiple=PAD_MULTIPLE)["logits"]
        ref = ref.astype(np.float64)
        packed32 = predict_packed(model, check, a.check_budget, 0, dev, warmup=False)
        self.r["checks"].append({"model": name, "dtype": "float32", "attn": "eager", "rows": len(check),
                                 "token_budget": a.check_budget, "packs": packed32["packs"],
                                 "packed_vs_padded": errors(packed32["logits"], ref)})
        print(f"{name} fp32 eager packed vs padded ({packed32['packs']} packs): "
              f"{self.r['checks'][-1]['packed_vs_padded']}", flush=True)
        del packed32

        # 2. bf16 on the `auto` path.
        cast_parameters_(model, torch.bfloat16)
        model.set_attn_implementation(attn)
        apply_kernels(model, kernels)
        base = None  # the first padded cell: the baseline of the others
        cells = [("padded", {"batch": int(b)}) for b in a.batches.split(",")]
        cells += [("packed", {"budget": int(b)}) for b in a.budgets.split(",")]
        if a.window_kept and getattr(config, "sliding_window", None):
            cells.append(("packed", {"budget": int(a.budgets.split(",")[len(a.budgets.split(",")) // 2]),
                                     "window_kept": True}))
        for layout, size in cells:
            cell = self.time_cell(model, name, layout, seqs, picked, ref, flops, attn, kernels, **size)
            if cell is None:
                continue
            logits = cell.pop("_logits").astype(np.float64)
            if base is None:
                base = (cell, logits)
                continue
            cell["vs_padded"] = errors(logits, base[1])
            cell["speedup_vs_padded"] = round(base[0]["seconds"] / cell["seconds"], 3)
            print(f"  vs padded batch {base[0]['batch_size']} (all rows): {cell['vs_padded']}, "
                  f"speed-up {cell['speedup_vs_padded']}", flush=True)
            self.save()
        del model
        self.save()

    def time_cell(self, model, name, layout, seqs, picked, ref, flops, attn, kernels, batch=None, budget=None,
                  window_kept=False):
        a, dev = self.args, self.dev
        if self.left() < 30:
            self.skip("time budget", model=name, layout=layout, batch=batch, token_budget=budget)
            return None
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

        def once(rows, warm):
            if layout == "padded":
                return predict(model, rows, batch, 0, dev, warmup_batches=0, warmup_shapes=warm,
                               pad_multiple=PAD_MULTIPLE)
            return predict_packed(model, rows, budget, 0, dev, warmup=warm)

        try:
            with keep_sliding_window(window_kept):
                passes = [once(seqs, True)] + [once(seqs, False) for _ in range(a.reps - 1)]
        except Exception as e:
            self.skip(f"{type(e).__name__}: {e}", model=name, layout=layout, batch=batch, token_budget=budget)
            torch.cuda.empty_cache() if dev.type == "cuda" else None
            return None
        first = passes[0]
        err = errors(first["logits"][picked], ref)
        secs = float(np.median([p["seconds"] for p in passes]))
        n, sheet = len(seqs), self.r["peak_bf16_flops_datasheet"]
        forwards = first["packs"] if layout == "packed" else -(-n // batch)
        cell = {"model": name, "layout": layout, "attn": attn, "kernels": kernels, "window_kept": window_kept,
                "batch_size": batch,
                "token_budget": budget, "rows": n, "tokens": first["tokens"],
                "computed_tokens": first["padded_tokens"], "padding_share": round(1 - first["tokens"] /
                                                                                  first["padded_tokens"], 4),
                "forwards": forwards, "tokens_per_forward": round(first["padded_tokens"] / forwards, 1),
                "warmup_seconds": round(first["warmup_seconds"], 2), "seconds": round(secs, 4),
                "seconds_passes": [round(p["seconds"], 4) for p in passes], "seconds_per_sample": secs / n,
                "tokens_per_second": first["tokens"] / secs, "model_tflops": flops / 1e12,
                "mfu": mfu(flops, secs, self.r["peak_bf16_flops"]),
                "mfu_datasheet": mfu(flops, secs, sheet) if sheet else None,
                "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if dev.type == "cuda" else None,
                "vs_fp32_eager": err}
        if layout == "packed":
            cell.update({k: first[k] for k in ("packs", "pack_shapes", "rows_over_budget", "fill")})
        self.r["cells"].append(cell)
        self.save()
        what = f"batch {batch}" if layout == "padded" else f"budget {budget} ({first['packs']} packs)"
        what += " sliding window kept (FA4 local kernel)" if window_kept else ""
        print(f"{name} {layout} {what} {attn} kernels={kernels}: {cell['seconds_per_sample']:.4f} s/sample, "
              f"MFU {cell['mfu']:.3f} / datasheet {cell['mfu_datasheet'] or 0:.3f}, "
              f"padding {cell['padding_share']:.3f}, "
              f"rel.err vs fp32 {err['max_rel_error']:.4f}, mem {cell['peak_memory_gb']} GB", flush=True)
        return {**cell, "_logits": first["logits"]}


@contextmanager
def keep_sliding_window(kept: bool):
    """Diagnostic: packed forwards as transformers runs them by itself, the sliding window handed to
    flash-attention whenever the packed row is longer than it (prefbench.packing's
    unreachable_window_off replaced by a no-op for the block)."""
    import prefbench.packing as packing

    saved = packing.unreachable_window_off
    if kept:
        packing.unreachable_window_off = lambda body, longest: nullcontext()
    try:
        yield
    finally:
        packing.unreachable_window_off = saved


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--models", default="llama3-8b,gemma2-9b")
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--batches", default="16,32", help="padded cells: rows per batch (the first is the baseline)")
    p.add_argument("--budgets", default="8192,16384,32768", help="packed cells: tokens per pack")
    p.add_argument("--check-budget", type=int, default=6144, help="tokens per pack of the fp32 eager check "
                   "(eager attention holds a T x T score matrix per head; > 4096 runs Gemma2's window mask)")
    p.add_argument("--window-kept", action=argparse.BooleanOptionalAction, default=True,
                   help="also a packed cell with Gemma2's unreachable sliding window kept (FA4's local kernel)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=480)
    Run(p.parse_args()).run()


if __name__ == "__main__":
    main()
