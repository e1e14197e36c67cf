"""Side by side, one process, one card: the inference path `dvc repro` runs, before and after, and
each fused-kernel choice, every cell checked against fp32 eager on the same weights.

Usage (on a CUDA machine; benchmarks/gpu_fused.sh installs flash-attn-4 and Liger first, see benchmarks/README.md):
    python -m benchmarks.default_path --out results.json [--rows 96] [--max-length 1024] [--batch 16]
On a CPU (a smoke run of the same code with the tiny models; flash-attn-4 and Liger are skipped):
    python -m benchmarks.default_path --out /tmp/r.json --models tiny-llama3,tiny-gemma2 --rows 8 \
        --max-length 128 --batch 4 --train-length 64

Per model (full-size architecture, random-init weights; lengths of real arena rows):
  1. fp32 eager logits on 8 real-length rows: the reference (Gemma2's softcap applied).
  2. bf16 cells, each timed by the pipeline's own `prefbench.infer.predict`: a pass after the
     pipeline's warm-up (one untimed batch per padded shape: what eval.json reports), then more
     passes; the median of all is the steady state.
       before:   today's path before this change: legacy attention (sdpa / eager), LoRA r=8
                 unmerged, no fused kernels, also timed with the old warm-up (1 batch)
       then the adapter merged by `prefbench.models.prepare_for_inference` (what evaluate runs),
       and every attention {legacy, flash_attention_4} x kernels {none, liger}.
     The cell whose attention and kernels are what `auto` resolves to on this card is marked
     `"path": "default"`: that is what evaluate and predict run.
  3. (--train) a LoRA step loop through `prefbench.train.train` on the default path, real lengths:
     --train-packing as models.<m>.packing (auto: packed on flash_attention_*, one packed row per
     step), --train-token-budget as models.<m>.train_token_budget (0: --train-batch rows a step), on
     the first min(--rows, --train-batch x --train-steps) rows; e.g. packed steps of 16384 tokens:
     `--rows 256 --train-batch 16 --train-steps 16 --train-token-budget 16384`.
MFU = model FLOPs (prefbench/flops.py, real tokens) / s / peak, against both the bf16 matmul peak
measured here and the datasheet's dense bf16 figure (H100 / H200 SXM: 989 TFLOP/s).
Results are written after every cell, so a run cut short keeps what it measured.
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

from benchmarks.gpu_bench import ROOT, cast_parameters_, datasheet_peak, measure_peak
from benchmarks.lengths import token_lengths
from prefbench.config import ModelParams, TrainParams
from prefbench.flops import forward_flops, lora_train_flops, mfu
from prefbench.infer import GPU_PAD_MULTIPLE as PAD_MULTIPLE  # as evaluate and predict pad on a GPU
from prefbench.infer import predict
from prefbench.models import (apply_kernels, count_parameters, label_config_kwargs, prepare_for_inference,
                              resolve_attention, resolve_kernels)
from prefbench.packing import resolve_packing
from prefbench.lora import add_lora
from prefbench.train import train

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
def errors(logits: np.ndarray, ref: np.ndarray) -> dict:
    """max |diff| / max |ref| and ||diff|| / ||ref|| against the fp32 eager reference."""
    d = logits.astype(np.float64) - ref
    return {"max_rel_error": float(np.abs(d).max() / (np.abs(ref).max() + 1e-12)),
            "rel_l2_error": float(np.linalg.norm(d) / (np.linalg.norm(ref) + 1e-12)),
            "finite": bool(np.isfinite(logits).all())}


def bench_lengths(rows: int, max_length: int, seed: int = 0) -> np.ndarray:
    """Token lengths of `rows` real arena rows (benchmarks/arena_lengths.json) at max_length."""
    chars = json.loads((ROOT / "benchmarks" / "arena_lengths.json").read_text())["part_chars"]
    picked = np.random.default_rng(seed).choice(len(chars), rows, replace=False)
    return token_lengths([chars[i] for i in picked], max_length)


def bench_sequences(lengths, vocab: int, seed: int) -> list[np.ndarray]:
    """Random token ids of the given lengths, well inside the vocabulary, never 0 (the benchmark's pad
    id) nor Llama3's EOS (its pipeline pad id): the classifier pools on the last non-pad token."""
    rng = np.random.default_rng(seed)
    return [rng.integers(10, min(vocab - 10, 100_000), int(n)) for n in lengths]


def model_cfg(name: str, attn: str, kernels: str, lora_r: int, max_length: int, batch: int,
              train_batch: int = 4, packing: str = "padded", train_token_budget: int = 0) -> ModelParams:
    """`packing` is read by training only here: the inference cells time padded batches
    (benchmarks/packed.py times packed inference)."""
    return ModelParams(pretrained=name, dtype="bfloat16", attn_implementation=attn, quantization="none",
                       lora_r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, lora_target_modules=LORA_TARGETS,
                       max_length=max_length, train_batch_size=train_batch, train_token_budget=train_token_budget,
                       eval_batch_size=batch, gradient_checkpointing=False, compile=False, kernels=kernels,
                       packing=packing, token_budget=16384)


class Run:
    def __init__(self, args):
        self.args = args
        self.dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.start = time.perf_counter()
        self.not_default = False
        cuda = self.dev.type == "cuda"
        self.capability = torch.cuda.get_device_capability() if cuda else None
        name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
        self.r = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": name, "capability": list(self.capability) if cuda else None,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "cuda": torch.version.cuda, "python": platform.python_version(),
                         **{pkg: _version(pkg) for pkg in ("flash-attn-4", "liger-kernel", "peft")}},
            "rows": args.rows, "max_length": args.max_length, "batch_size": args.batch,
            "pad_multiple": PAD_MULTIPLE, "peak_bf16_flops_datasheet": datasheet_peak(name),
            "models": {}, "cells": [], "train": [], "skipped": [],
            "notes": ["random-init weights: timings are real, logits are not a trained model's; errors compare "
                      "each cell with fp32 eager on the same weights and inputs",
                      "seconds_pipeline: the first timed pass after the pipeline's warm-up (evaluate's "
                      "seconds_per_sample); seconds: the median of all passes (steady state)"],
        }

    def left(self) -> float:
        """Seconds left for the model in hand: each model gets an equal share of what is left when it
        starts, so a slow first model cannot starve the second."""
        return self.deadline - time.perf_counter()

    def save(self):
        Path(self.args.out).write_text(json.dumps(self.r, indent=1) + "\n")

    def skip(self, reason: str, **tags):
        self.r["skipped"].append({**tags, "reason": reason[:400]})
        print(f"skipped {tags}: {reason[:160]}", flush=True)
        self.save()

    def lengths(self, max_length: int, seed: int = 0) -> np.ndarray:
        return bench_lengths(self.args.rows, max_length, seed)

    def sequences(self, lengths, vocab: int, seed: int) -> list[np.ndarray]:
        return bench_sequences(lengths, vocab, seed)

    def run(self):
        self.r["peak_bf16_flops"] = measure_peak(self.dev)
        print(f"{self.r['device']}: bf16 matmul {self.r['peak_bf16_flops'] / 1e12:.0f} TFLOP/s measured, "
              f"datasheet {self.r['peak_bf16_flops_datasheet']}", flush=True)
        names = self.args.models.split(",")
        for k, name in enumerate(names):
            now = time.perf_counter()
            self.deadline = now + (self.args.budget_s - (now - self.start)) / (len(names) - k)
            try:
                self.suite(name)
            except Exception as e:  # one model's failure must not lose the other's cells
                self.skip(f"{type(e).__name__}: {e}", model=name, stage="suite")
            gc.collect()
            torch.cuda.empty_cache() if self.dev.type == "cuda" else None
        self.r["seconds_total"] = round(time.perf_counter() - self.start, 1)
        self.save()
        print(f"done in {self.r['seconds_total']:.0f} s", flush=True)

    def set_attn(self, model, attn: str, name: str) -> bool:
        try:
            model.set_attn_implementation(attn)
            return True
        except Exception as e:  # not installed, refused (sdpa + softcap), unsupported card
            self.skip(f"{type(e).__name__}: {e}", model=name, attn=attn)
            return False

    def suite(self, name: str):
        a, dev = self.args, self.dev
        config = AutoConfig.from_pretrained(ROOT / "models" / name, **label_config_kwargs())
        config.pad_token_id = 0
        family = config.model_type
        torch.manual_seed(0)
        with torch.device(dev):
            model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32,
                                                                   attn_implementation="eager")
        counts = count_parameters(model)
        n_non_emb = counts["params_non_embedding"]
        legacy = resolve_attention("auto", family)  # the choice without flash-attn-4 (CPU, T4, A100)
        auto_attn = resolve_attention("auto", family, dev.type, self.capability)
        auto_kernels = resolve_kernels("auto", dev.type, self.capability)
        if a.kernels:  # --kernels: another choice in the default cell's place (then not marked default)
            auto_kernels, self.not_default = a.kernels, True
        self.r["models"][name] = {**counts, "layers": config.num_hidden_layers, "family": family,
                                  "auto": {"attn": auto_attn, "kernels": auto_kernels}, "legacy_attn": legacy}
        lengths = self.lengths(a.max_length)
        check = self.sequences(lengths[:8], config.vocab_size, seed=1)
        seqs = self.sequences(lengths, config.vocab_size, seed=2)
        flops = forward_flops(config, n_non_emb, lengths)

        def logits(net):
            return predict(net, check, 8, 0, dev, warmup_batches=0, pad_multiple=PAD_MULTIPLE)["logits"]

        ref = logits(model).astype(np.float64)  # fp32 eager: the ground truth
        cast_parameters_(model, torch.bfloat16)
        eval_cfg = model_cfg(name, "auto", "auto", 8, a.max_length, a.batch)

        # before: the path evaluate ran before this change (adapter unmerged, 1 warm-up batch).
        lora = add_lora(model, eval_cfg)  # B = 0 at init: the same function as the base
        if not a.only_default:
            self.cell(lora, name, legacy, "none", flops, seqs, check_err=errors(logits(lora), ref),
                      adapter="unmerged", old_warmup=True)
        merged = prepare_for_inference(lora, eval_cfg)  # the pipeline's merge (what evaluate runs now)
        merged.__dict__.pop("peft_config", None)  # merged: no adapter left to stack another onto
        for kernels in ("none", "liger") if not a.only_default else (auto_kernels,):
            if kernels == "liger":
                try:
                    resolve_kernels("liger", dev.type, self.capability)  # raises where Liger cannot run
                    apply_kernels(merged, "liger")
                except Exception as e:
                    self.skip(f"{type(e).__name__}: {e}", model=name, kernels="liger")
                    break
            for attn in dict.fromkeys([legacy, "flash_attention_4"] if not a.only_default else [auto_attn]):
                if self.left() < 40:
                    self.skip("time budget", model=name, attn=attn, kernels=kernels)
                    continue
                if not self.set_attn(merged, attn, name):
                    continue
                try:
                    err = errors(logits(merged), ref)
                except Exception as e:  # e.g. a kernel that does not build for this head_dim
                    self.skip(f"{type(e).__name__}: {e}", model=name, attn=attn, kernels=kernels)
                    continue
                default = attn == auto_attn and kernels == auto_kernels and not self.not_default
                self.cell(merged, name, attn, kernels, flops, seqs, check_err=err, adapter="merged",
                          path="default" if default else None)
        if a.compile and self.left() > 60:
            self.set_attn(merged, auto_attn, name)
            self.compile_cell(merged, name, auto_attn, auto_kernels, flops, seqs, logits, ref)
        if a.train and self.left() > 90:
            self.set_attn(merged, auto_attn, name)
            self.train_cell(merged, config, n_non_emb, name, auto_attn,
                            auto_kernels if auto_kernels == "liger" and self.cells_with(name, "liger") else "none")
        del model, lora, merged
        self.save()

    def compile_cell(self, model, name, attn, kernels, flops, seqs, logits, ref):
        """compile: true on the default path (prepare_for_inference: torch.compile(dynamic=True)); every
        padded shape warmed first (the compile cost, warmup_seconds), then the timed passes with
        recompilation turned into an error: a recompile inside the timed loop fails the cell. The
        break-even row count: extra warm-up seconds over the seconds saved per row."""
        import dataclasses

        import torch._dynamo

        cfg = model_cfg(name, attn, kernels, 8, self.args.max_length, self.args.batch)
        compiled = prepare_for_inference(model, dataclasses.replace(cfg, compile=True))
        try:  # timed first, so that the first compile is counted in warmup_seconds
            cell = self.cell(compiled, name, attn, kernels, flops, seqs, check_err={}, adapter="merged",
                             recompile_guard=True)
        finally:
            torch._dynamo.config.error_on_recompile = False
        if cell:
            try:
                cell.update(errors(logits(compiled), ref))
            except Exception as e:
                cell["error_check"] = f"{type(e).__name__}: {str(e)[:200]}"
        plain = next((c for c in self.r["cells"] if c["model"] == name and not c.get("compiled")
                      and c["attn"] == attn and c["kernels"] == kernels and c["adapter"] == "merged"), None)
        if cell and plain:
            cell["compiled"] = True
            saved = plain["seconds_per_sample"] - cell["seconds_per_sample"]
            extra = cell["warmup_seconds"] - plain["warmup_seconds"]
            cell["break_even_rows"] = round(extra / saved) if saved > 0 else None
            self.save()
            print(f"{name} compiled: warm-up {cell['warmup_seconds']:.0f} s (uncompiled {plain['warmup_seconds']:.0f} s), "
                  f"break-even {cell['break_even_rows']} rows", flush=True)

    def cells_with(self, name, kernels) -> bool:
        return any(c["model"] == name and c["kernels"] == kernels for c in self.r["cells"])

    def cell(self, net, name, attn, kernels, flops, seqs, check_err, adapter, path=None, old_warmup=False,
             recompile_guard=False):
        a, dev = self.args, self.dev
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        tags = {"model": name, "attn": attn, "kernels": kernels, "adapter": adapter}
        try:
            extra = {}
            if old_warmup:  # evaluate before this change: 1 warm-up batch, new shapes paid inside the timer
                old = predict(net, seqs, a.batch, 0, dev, warmup_batches=1, pad_multiple=PAD_MULTIPLE)
                extra["seconds_per_sample_old_warmup"] = old["seconds"] / len(seqs)
            warm = None
            if recompile_guard:  # warm every shape (compiling), then any recompilation in a timed pass raises
                warm = predict(net, seqs, a.batch, 0, dev, warmup_batches=0, warmup_shapes=True,
                               pad_multiple=PAD_MULTIPLE)
                torch._dynamo.config.error_on_recompile = True
            first = predict(net, seqs, a.batch, 0, dev, warmup_batches=0, warmup_shapes=warm is None,
                            pad_multiple=PAD_MULTIPLE)
            first["warmup_seconds"] += warm["warmup_seconds"] if warm else 0.0
            passes = [first] + [predict(net, seqs, a.batch, 0, dev, warmup_batches=0, pad_multiple=PAD_MULTIPLE)
                                for _ in range(a.reps - 1)]
        except Exception as e:
            self.skip(f"{type(e).__name__}: {e}", **tags)
            torch.cuda.empty_cache() if dev.type == "cuda" else None
            return None
        secs = float(np.median([p["seconds"] for p in passes]))
        n = len(seqs)
        sheet = self.r["peak_bf16_flops_datasheet"]
        cell = {**tags, "path": path, "max_length": a.max_length, "batch_size": a.batch, "rows": n,
                "batch_shapes": first["batch_shapes"], "warmup_seconds": round(first["warmup_seconds"], 2),
                "seconds": round(secs, 4), "seconds_passes": [round(p["seconds"], 4) for p in passes],
                "seconds_per_sample": secs / n, "seconds_per_sample_pipeline": first["seconds"] / n, **extra,
                "tokens_per_second": first["tokens"] / secs,
                "padding_share": round(1 - first["tokens"] / first["padded_tokens"], 4),
                "model_tflops": flops / 1e12, "mfu": mfu(flops, secs, self.r["peak_bf16_flops"]),
                "mfu_datasheet": mfu(flops, secs, sheet) if sheet else None,
                "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if dev.type == "cuda" else None,
                **check_err, "softcap_applied": attn != "sdpa" or self.r["models"][name]["family"] != "gemma2"}
        self.r["cells"].append(cell)
        self.save()
        print(f"{name} {attn} kernels={kernels} {adapter}{' [default]' if path else ''}: "
              f"{cell['seconds_per_sample']:.4f} s/sample (pipeline pass {cell['seconds_per_sample_pipeline']:.4f}), "
              f"MFU {cell['mfu']:.2f} / datasheet {cell['mfu_datasheet'] or 0:.2f}, "
              f"rel.err {check_err.get('max_rel_error', float('nan')):.4f}, mem {cell['peak_memory_gb']} GB", flush=True)
        return cell

    def train_cell(self, model, config, n_non_emb, name, attn, kernels):
        """LoRA r=16 training steps through prefbench.train.train on real-length rows (the train stage's
        own batching: length-bucketed shuffled batches of --train-batch rows, dynamic padding; or
        token-budget batches), on the default path, packed or padded as --train-packing resolves."""
        a, dev = self.args, self.dev
        cfg = model_cfg(name, attn, kernels, 16, a.train_length, a.batch, a.train_batch, a.train_packing,
                        a.train_token_budget)
        packed = resolve_packing(a.train_packing, attn, "--train-packing")
        tp = TrainParams(epochs=1, learning_rate=1e-4, warmup_ratio=0.0, weight_decay=0.0, grad_accum_steps=1,
                         max_grad_norm=1.0, seed=0, log_every=1000, checkpoint_every=0, devices=1)
        lengths = self.lengths(a.train_length, seed=3)[: a.train_batch * a.train_steps]
        seqs = self.sequences(lengths, config.vocab_size, seed=3)
        labels = np.zeros(len(seqs), dtype=np.int64)
        lora = add_lora(model, cfg)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            # Warm-up: one untimed pass over the same rows, batches and shapes (same seed), so that
            # flash-attn-4's and Triton's per-shape compiles are not timed: the steady state.
            train(lora, seqs, labels, cfg, tp, 0, dev)
            r = train(lora, seqs, labels, cfg, tp, 0, dev)
        except Exception as e:
            self.skip(f"{type(e).__name__}: {e}", model=name, train=True, attn=attn, kernels=kernels)
            return
        finally:
            lora.unload()  # peft's own removal of the LoRA layers: the base model is left as it was
        fl = lora_train_flops(config, n_non_emb, lengths)
        sheet = self.r["peak_bf16_flops_datasheet"]
        batch = f"up to {a.train_token_budget} tokens" if a.train_token_budget else f"{a.train_batch} rows"
        cell = {"model": name, "attn": attn, "kernels": kernels, "path": "default", "lora_r": 16,
                "batch": f"{batch}, real lengths <= {a.train_length}", "steps": r["steps"],
                "packing": "packed" if packed else "padded", "token_budget": a.train_token_budget,
                "warmup": "one untimed pass over the same batches (every shape compiled first)",
                "tokens": int(lengths.sum()), "tokens_per_step": r["tokens"] / r["steps"],
                "final_loss": r["final_loss"],
                "seconds_per_step": r["train_seconds"] / r["steps"], "tokens_per_second": r["tokens_per_second"],
                "mfu": mfu(fl, r["train_seconds"], self.r["peak_bf16_flops"]),
                "mfu_datasheet": mfu(fl, r["train_seconds"], sheet) if sheet else None,
                "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if dev.type == "cuda" else None}
        self.r["train"].append(cell)
        self.save()
        print(f"train {name} {attn} kernels={kernels} {cell['packing']}: {cell['seconds_per_step']:.3f} s/step, "
              f"{cell['tokens_per_step']:.0f} tokens/step, "
              f"{cell['tokens_per_second']:.0f} tokens/s, MFU {cell['mfu']:.2f}, loss {r['final_loss']:.3f}", flush=True)


def _version(pkg: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--models", default="llama3-8b,gemma2-9b")
    p.add_argument("--rows", type=int, default=96)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--reps", type=int, default=3, help="timed passes per cell, the first after the pipeline warm-up")
    p.add_argument("--train", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--train-length", type=int, default=1024)
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--train-steps", type=int, default=6,
                   help="the train cell trains on the first --train-batch x this many of the --rows rows")
    p.add_argument("--train-packing", choices=["auto", "packed", "padded"], default="auto",
                   help="as models.<m>.packing for the train cell (auto: packed on flash_attention_*)")
    p.add_argument("--train-token-budget", type=int, default=0,
                   help="as models.<m>.train_token_budget: tokens per step (0: --train-batch rows per step)")
    p.add_argument("--budget-s", type=float, default=520)
    p.add_argument("--only-default", action="store_true", help="only the default cell (with --compile: the compile "
                   "break-even)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="also the default path under compile: true, with its break-even row count")
    p.add_argument("--kernels", choices=["none", "liger"], help="instead of kernels auto (cells not marked default)")
    Run(p.parse_args()).run()


if __name__ == "__main__":
    main()
