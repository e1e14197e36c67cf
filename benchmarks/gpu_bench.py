"""GPU benchmark: Gemma2-9B vs Llama3-8B inference and LoRA training with prefbench's own code.

Usage (on a CUDA machine; benchmarks/run_gpu.sh installs what it needs from .whl/, with no network):
    python -m benchmarks.gpu_bench --out results.json [--rows 128] [--budget-s 540]
On a CPU (a smoke run of the same code path with the tiny models):
    python -m benchmarks.gpu_bench --out /tmp/r.json --models tiny-llama3,tiny-gemma2 --rows 16 \
        --max-lengths 128 --train-length 64

For each model (random-init weights from the shipped configs; timing does not depend on values):
  1. fp32 eager reference logits on a fixed correctness batch (the ground truth, softcap applied).
  2. bf16: attention {eager, sdpa, flex_attention} x max_length x batching {fixed padding to
     max_length, dynamic padding + length-sorted}: seconds/sample, tokens/s, MFU, peak memory,
     max relative error of logits vs the fp32 reference. Gemma2 paths that skip the softcap are
     flagged `softcap_applied: false`.
  3. fp16 and NF4 4-bit (bitsandbytes) on the best correct attention, dynamic batching.
  4. LoRA training steps (prefbench.train.train) with and without gradient checkpointing.
Results are written after every cell, so a run cut short still returns what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModelForSequenceClassification

from benchmarks.lengths import token_lengths
from prefbench.config import ModelParams, TrainParams
from prefbench.flops import forward_flops, lora_train_flops, mfu
from prefbench.batching import GPU_PAD_MULTIPLE as PAD_MULTIPLE  # as evaluate and predict pad on a GPU
from prefbench.infer import predict
from prefbench.models import count_parameters, label_config_kwargs, resolve_attention, resolve_kernels
from prefbench.lora import add_lora
from prefbench.train import train

ROOT = Path(__file__).resolve().parents[1]
# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, by a substring of the card's name:
# MFU is reported against these and against the matmul peak measured in the same run.
DATASHEET_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def datasheet_peak(device_name: str) -> float | None:
    return next((v for k, v in DATASHEET_BF16.items() if k in device_name), None)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def measure_peak(device: torch.device, n: int = 8192, reps: int = 10) -> float:
    """bf16 matmul FLOP/s of this card (median of `reps` after warm-up): the MFU denominator."""
    if device.type != "cuda":
        n, reps = 512, 3
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / float(np.median(times))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device):
    return round(torch.cuda.max_memory_allocated() / 1e9, 2) if device.type == "cuda" else None


def rel_error(logits: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(logits - ref)) / (np.max(np.abs(ref)) + 1e-12))


def cast_parameters_(model, dtype: torch.dtype) -> None:
    """Cast weights only. model.to(dtype) would also cast buffers such as RoPE's inv_freq, which
    must stay fp32 (a bf16 inv_freq shifts positions by whole radians at 1000 tokens)."""
    for p in model.parameters():
        p.data = p.data.to(dtype)


def random_sequences(lengths: np.ndarray, vocab: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(10, vocab - 10, int(n)) for n in lengths]


class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.start = time.perf_counter()
        chars = json.loads((ROOT / "benchmarks" / "arena_lengths.json").read_text())["part_chars"]
        self.chars = chars
        self.results = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name() if self.device.type == "cuda" else platform.processor() or "cpu",
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "cuda": torch.version.cuda, "python": platform.python_version()},
            "rows": args.rows, "cells": [], "train": [], "skipped": [],
            "notes": ["random-init weights: timings are real, logits are not a model's; max_rel_error compares "
                      "each path with fp32 eager on the same weights and inputs",
                      "MFU = model FLOPs (prefbench/flops.py, real tokens only) / seconds / peak_bf16_flops; "
                      "mfu_datasheet: over the datasheet's dense bf16 peak (H100/H200 SXM 989 TFLOP/s)"],
        }

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.start)

    def save(self):
        Path(self.args.out).write_text(json.dumps(self.results, indent=1) + "\n")

    def lengths(self, max_length: int) -> np.ndarray:
        rng = np.random.default_rng(0)
        rows = rng.choice(len(self.chars), self.args.rows, replace=False)
        return token_lengths([self.chars[i] for i in rows], max_length)

    def run(self):
        self.results["peak_bf16_flops"] = measure_peak(self.device)
        print(f"peak bf16 matmul: {self.results['peak_bf16_flops'] / 1e12:.1f} TFLOP/s", flush=True)
        self.save()
        names = self.args.models.split(",")
        for name in names:
            self.model_suite(name)
            self.free()
        # torch.compile last, after every model's grid: its compile time is the least predictable.
        for name in names if self.args.compile else []:
            self.compile_suite(name)
            self.free()
        self.results["seconds_total"] = round(time.perf_counter() - self.start, 1)
        self.save()
        print(f"done in {self.results['seconds_total']:.0f} s", flush=True)

    def free(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def build(self, name: str, dtype: torch.dtype):
        config = AutoConfig.from_pretrained(ROOT / "models" / name, **label_config_kwargs())
        config.pad_token_id = 0
        torch.manual_seed(0)
        with torch.device(self.device):
            model = AutoModelForSequenceClassification.from_config(config, dtype=dtype, attn_implementation="eager")
        return config, model

    def compile_suite(self, name: str):
        config, model = self.build(name, torch.bfloat16)
        info = self.results["models"][name]
        # Gemma2 compiles its eager attention (Inductor fuses the softcap, mask and softmax elementwise
        # work): flex attention under torch.compile(dynamic=True) failed with an InductorError on an
        # H200 (2026-11-26, benchmarks/results/bench-side-by-side-1.json).
        attn = "eager" if info["family"] == "gemma2" else info["best_attn"]
        if self.set_attn(model, attn, name):
            self.compile_cell(model, config, info["params_non_embedding"], name, attn,
                              int(self.args.max_lengths.split(",")[0]))
        del model

    def model_suite(self, name: str):
        a, dev = self.args, self.device
        config, model = self.build(name, torch.float32)
        family = config.model_type
        counts = count_parameters(model)
        n_non_emb = counts["params_non_embedding"]
        self.results.setdefault("models", {})[name] = {**counts, "layers": config.num_hidden_layers,
                                                        "family": family}
        max_lengths = [int(x) for x in a.max_lengths.split(",")]
        # Correctness batch: 8 real-length rows at the first max_length, fp32 eager = ground truth.
        check = random_sequences(self.lengths(max_lengths[0])[:8], config.vocab_size, seed=1)
        ref = predict(model, check, 8, 0, dev, warmup_batches=0)["logits"]
        cast_parameters_(model, torch.bfloat16)
        errors = {}
        for attn in a.attns.split(","):
            if self.set_attn(model, attn, name):
                errors[attn] = rel_error(predict(model, check, 8, 0, dev, warmup_batches=0)["logits"], ref)
        # Order: what matters most first, so a run cut short by the budget keeps it.
        best_attn = self.attention_grid(model, config, n_non_emb, name, family, errors, max_lengths[0])
        self.results["models"][name]["best_attn"] = best_attn
        self.set_attn(model, best_attn, name)
        seqs, batch = self.workload(config, max_lengths[0])
        cast_parameters_(model, torch.float16)
        err = rel_error(predict(model, check, 8, 0, dev, warmup_batches=0)["logits"], ref)
        cell = self.infer_cell(model, config, n_non_emb, seqs, batch, max_lengths[0], "dynamic",
                               model=name, attn=best_attn, dtype="float16")
        if cell:
            cell.update(max_rel_error=err, softcap_applied=True)
        cast_parameters_(model, torch.bfloat16)
        for ckpt in (False, True) if a.train else ():
            # Training runs the pipeline's choice (attention: auto), which also trains: flex attention
            # has no backward for Gemma2's head_dim 256 (see prefbench.models.resolve_attention).
            train_attn = resolve_attention("auto", family)  # without flash-attn-4 (see default_path.py)
            self.set_attn(model, train_attn, name)
            lora = self.train_cell(model, config, n_non_emb, name, train_attn, ckpt)
            if lora is not None:  # peft injects LoRA layers in place: remove them, or every later cell
                model = lora.unload()  # (2048 tokens, NF4) would time the base with r=16 adapters attached
            model.__dict__.pop("peft_config", None)  # else the next add_lora stacks a second adapter
            assert not any("lora_" in n for n, _ in model.named_modules()), "LoRA layers left in the model"
        for max_length in max_lengths[1:]:
            self.attention_grid(model, config, n_non_emb, name, family, errors, max_length)
        self.set_attn(model, best_attn, name)
        if a.nf4:
            self.nf4_cell(model, config, n_non_emb, check, ref, seqs, batch, max_lengths[0], name, best_attn)
        del model
        self.save()

    def workload(self, config, max_length: int):
        seqs = random_sequences(self.lengths(max_length), config.vocab_size, seed=2)
        return seqs, max(1, self.args.tokens_per_batch // max_length)

    def attention_grid(self, model, config, n_non_emb, name, family, errors, max_length) -> str:
        """bf16, every attention x {fixed, dynamic}; returns the fastest correct attention."""
        seqs, batch = self.workload(config, max_length)
        best = {}
        for attn, err in errors.items():
            self.set_attn(model, attn, name)
            softcap = not (family == "gemma2" and attn == "sdpa")
            for batching in ("fixed", "dynamic"):
                cell = self.infer_cell(model, config, n_non_emb, seqs, batch, max_length, batching,
                                       model=name, attn=attn, dtype="bfloat16")
                if cell is None:
                    continue
                cell.update(max_rel_error=err, softcap_applied=softcap)
                if softcap and batching == "dynamic" and cell["seconds_per_sample"] < best.get("sps", 1e9):
                    best = {"attn": attn, "sps": cell["seconds_per_sample"]}
        self.save()
        return best.get("attn", "eager")

    def compile_cell(self, model, config, n_non_emb, name, attn, max_length):
        """torch.compile(dynamic=True) on the best path: one compile for all padded widths."""
        if self.left() < 120:
            self.results["skipped"].append({"model": name, "compile": True, "reason": "time budget"})
            return
        compiled = torch.compile(model, dynamic=True)
        t = time.perf_counter()
        seqs, batch = self.workload(config, max_length)
        cell = self.infer_cell(compiled, config, n_non_emb, seqs, batch, max_length, "dynamic",
                               model=name, attn=attn, dtype="bfloat16", compiled=True)
        if cell:
            cell.update(softcap_applied=True, compile_and_passes_seconds=round(time.perf_counter() - t, 1))
            self.save()

    def set_attn(self, model, attn: str, name: str) -> bool:
        try:
            model.set_attn_implementation(attn)
            return True
        except Exception as e:  # e.g. transformers >= 5.24 refuses sdpa for Gemma2 (softcap)
            self.results["skipped"].append({"model": name, "attn": attn, "reason": str(e)[:300]})
            print(f"{name} {attn}: refused: {str(e)[:120]}", flush=True)
            self.save()
            return False

    def infer_cell(self, net, config, n_non_emb, seqs, batch, max_length, batching, **tags):
        if self.left() < 30:
            self.results["skipped"].append({**tags, "max_length": max_length, "batching": batching,
                                            "reason": "time budget"})
            return None
        dev = self.device
        reset_peak(dev)
        pad_to = max_length if batching == "fixed" else None
        try:
            # Steady state, as over the ~25k rows of a Kaggle run: an untimed pass over every batch
            # first (flex attention and torch.compile build kernels per shape, cuDNN attention plans
            # per shape, the allocator grows), then `reps` timed passes; the median pass is reported.
            predict(net, seqs, batch, 0, dev, warmup_batches=0, pad_to=pad_to, pad_multiple=PAD_MULTIPLE)
            passes = [predict(net, seqs, batch, 0, dev, warmup_batches=0, pad_to=pad_to, pad_multiple=PAD_MULTIPLE)
                      for _ in range(self.args.reps)]
            r = sorted(passes, key=lambda p: p["seconds"])[len(passes) // 2]
        except Exception as e:  # OOM, a compile failure: recorded, and the run goes on
            self.results["skipped"].append({**tags, "max_length": max_length, "batching": batching,
                                            "reason": f"{type(e).__name__}: {str(e)[:300]}"})
            print(f"{tags} L={max_length} {batching}: {type(e).__name__}", flush=True)
            torch.cuda.empty_cache() if dev.type == "cuda" else None
            return None
        flops = forward_flops(config, n_non_emb, [len(s) for s in seqs])
        cell = {**tags, "max_length": max_length, "batching": batching, "batch_size": batch,
                "rows": len(seqs), "seconds": round(r["seconds"], 4),
                "seconds_passes": [round(p["seconds"], 4) for p in passes],
                "seconds_per_sample": r["seconds"] / len(seqs), "tokens_per_second": r["tokens"] / r["seconds"],
                "padding_share": round(1 - r["tokens"] / r["padded_tokens"], 4),
                "model_tflops": flops / 1e12, "mfu": mfu(flops, r["seconds"], self.results["peak_bf16_flops"]),
                "mfu_datasheet": self.mfu_datasheet(flops, r["seconds"]), "peak_memory_gb": peak_gb(dev),
                "path": "default" if self.is_default(tags, batching) else None}
        self.results["cells"].append(cell)
        self.save()
        print(f"{tags} L={max_length} {batching}: {cell['seconds_per_sample']:.4f} s/sample, "
              f"MFU {cell['mfu']:.2f}, mem {cell['peak_memory_gb']} GB", flush=True)
        return cell

    def mfu_datasheet(self, flops: float, seconds: float) -> float | None:
        peak = datasheet_peak(self.results["device"])
        return mfu(flops, seconds, peak) if peak else None

    def is_default(self, tags: dict, batching: str) -> bool:
        """What evaluate runs with default params on this machine: attention and kernels `auto`
        (this grid has no fused kernels, so only where `auto` resolves to none), dynamic padding,
        bf16, uncompiled (an adapter merged into the base is timed as the base)."""
        cap = torch.cuda.get_device_capability() if self.device.type == "cuda" else None
        family = self.results["models"][tags["model"]]["family"]
        return (batching == "dynamic" and tags.get("dtype") == "bfloat16" and not tags.get("compiled")
                and tags.get("attn") == resolve_attention("auto", family, self.device.type, cap)
                and resolve_kernels("auto", self.device.type, cap) == "none")

    def train_cell(self, model, config, n_non_emb, name, attn, checkpointing: bool):
        a, dev = self.args, self.device
        if self.left() < 60:
            self.results["skipped"].append({"model": name, "train": True, "reason": "time budget"})
            return None
        cfg = ModelParams(pretrained=name, dtype="bfloat16", attn_implementation=attn, quantization="none",
                          lora_r=16, lora_alpha=32, lora_dropout=0.0, lora_target_modules=LORA_TARGETS,
                          max_length=a.train_length, train_batch_size=a.train_batch, train_token_budget=0,
                          eval_batch_size=8, gradient_checkpointing=checkpointing, compile=False, kernels="none",
                          packing="padded", token_budget=16384)
        tp = TrainParams(epochs=1, learning_rate=1e-4, warmup_ratio=0.0, weight_decay=0.0, grad_accum_steps=1,
                         max_grad_norm=1.0, seed=0, log_every=1000, checkpoint_every=0, devices=1)
        lora_model = add_lora(model, cfg)
        seqs = random_sequences(np.full(a.train_batch * a.train_steps, a.train_length), config.vocab_size, 3)
        labels = np.zeros(len(seqs), dtype=np.int64)
        reset_peak(dev)
        try:
            train(lora_model, seqs[: a.train_batch * 2], labels[: a.train_batch * 2], cfg, tp, 0, dev)  # warm-up
            r = train(lora_model, seqs, labels, cfg, tp, 0, dev)
        except Exception as e:  # OOM, flex attention without a backward on this device: recorded, run goes on
            self.results["skipped"].append({"model": name, "train": True, "checkpointing": checkpointing,
                                            "attn": attn, "reason": f"{type(e).__name__}: {str(e)[:300]}"})
            print(f"train {name} {attn} ckpt={checkpointing}: {type(e).__name__}", flush=True)
            torch.cuda.empty_cache() if dev.type == "cuda" else None
            return lora_model
        finally:
            if checkpointing:
                model.gradient_checkpointing_disable()
        flops = lora_train_flops(config, n_non_emb, [len(s) for s in seqs])
        cell = {"model": name, "attn": attn, "gradient_checkpointing": checkpointing,
                "batch": f"{a.train_batch}x{a.train_length}", "steps": r["steps"],
                "seconds_per_step": r["train_seconds"] / r["steps"], "tokens_per_second": r["tokens_per_second"],
                "mfu": mfu(flops, r["train_seconds"], self.results["peak_bf16_flops"]),
                "mfu_datasheet": self.mfu_datasheet(flops, r["train_seconds"]),
                "peak_memory_gb": peak_gb(dev), "params_trainable": count_parameters(lora_model)["params_trainable"]}
        self.results["train"].append(cell)
        self.save()
        print(f"train {name} {attn} ckpt={checkpointing}: {cell['seconds_per_step']:.3f} s/step, "
              f"MFU {cell['mfu']:.2f}, mem {cell['peak_memory_gb']} GB", flush=True)
        return lora_model

    def nf4_cell(self, model, config, n_non_emb, check, ref, seqs, batch, max_length, name, attn):
        if self.device.type != "cuda":
            return
        try:
            import bitsandbytes as bnb  # noqa: F401
        except ImportError:
            self.results["skipped"].append({"model": name, "dtype": "nf4", "reason": "bitsandbytes not installed"})
            return
        from prefbench.models import quantize_nf4_
        quantize_nf4_(model, compute_dtype=torch.bfloat16)
        gc.collect()
        torch.cuda.empty_cache()
        err = rel_error(predict(model, check, 8, 0, self.device, warmup_batches=0)["logits"], ref)
        cell = self.infer_cell(model, config, n_non_emb, seqs, batch, max_length, "dynamic",
                               model=name, attn=attn, dtype="nf4")
        if cell:
            cell.update(max_rel_error=err, softcap_applied=True)
            self.save()


def main():
    # Dynamic padding gives flex attention one compiled kernel per (batch, width) shape: allow them all.
    torch._dynamo.config.cache_size_limit = 256
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--models", default="llama3-8b,gemma2-9b")
    p.add_argument("--attns", default="eager,sdpa,flex_attention")
    p.add_argument("--max-lengths", default="1024,2048")
    p.add_argument("--rows", type=int, default=128)
    p.add_argument("--tokens-per-batch", type=int, default=16384)
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--train-length", type=int, default=1024)
    p.add_argument("--train-steps", type=int, default=6)
    p.add_argument("--budget-s", type=float, default=540)
    p.add_argument("--reps", type=int, default=3, help="timed passes per inference cell (median reported)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--train", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--nf4", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args()
    Bench(args).run()


if __name__ == "__main__":
    main()
