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
  3. (--train) LoRA r=16 step loops through `prefbench.train.train` on the default path, real
     lengths <= --train-length: one cell, --train-packing as models.<m>.packing (auto: packed on
     flash_attention_*, one packed row per step) and --train-token-budget as
     models.<m>.train_token_budget (0: --train-batch rows a step); or with --train-grid one cell per
     setting, e.g. `padded:rows4,packed:4096,packed:16384:gc` (packing, then rowsN or a token
     budget, then `gc` for gradient checkpointing, applied as the pipeline does: prefbench.lora.add_lora;
     `exp`: the CUDA allocator's expandable segments for that cell; `cast`: peft's LoRA input cast
     kept, as before the train loop turned it off).
     Each cell trains on the first of the --rows rows that make --train-steps steps (N x steps rows,
     or rows summing to at least steps x budget tokens: at least that many steps), one untimed pass
     first (every shape compiled), then the timed pass (on the same batches; --train-timed-seed N:
     on other batches of the same rows, as a long run meets them). A cell that runs out of memory
     is recorded as skipped (`oom`), and larger budgets without checkpointing are not tried.
     --no-infer: the train cells only (no fp32 reference, no inference cells), e.g.
     `--no-infer --rows 512 --train-steps 8 --train-grid padded:rows4,packed:4096,packed:8192:gc`.
MFU = model FLOPs (prefbench/flops.py, real tokens; in training never the forward that gradient
checkpointing recomputes: that lowers MFU) / s / peak, against both the bf16 matmul peak measured
here and the datasheet's dense bf16 figure (H100 / H200 SXM: 989 TFLOP/s).
Results are written after every cell, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import platform
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModelForSequenceClassification

from benchmarks.gpu_bench import ROOT, cast_parameters_, datasheet_peak, measure_peak
from benchmarks.lengths import token_lengths
from prefbench.config import ModelParams, TrainParams
from prefbench.flops import forward_flops, lora_train_flops, mfu
from prefbench.batching import GPU_PAD_MULTIPLE as PAD_MULTIPLE  # as evaluate and predict pad on a GPU
from prefbench.infer import predict
from prefbench.models import (apply_kernels, count_parameters, label_config_kwargs, prepare_for_inference,
                              resolve_attention, resolve_kernels)
from prefbench.packing import resolve_packing
from prefbench.lora import add_lora
import prefbench.train
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


@dataclasses.dataclass(frozen=True)
class TrainSetting:
    """One train cell: `packing` as models.<m>.packing, `token_budget` as train_token_budget (0:
    `rows` rows a step), `gradient_checkpointing` as models.<m>.gradient_checkpointing."""
    packing: str
    token_budget: int
    rows: int
    gradient_checkpointing: bool
    expandable_segments: bool = False  # the CUDA caching allocator's expandable_segments for this cell
    # peft's cast of every LoRA layer's input to the float32 LoRA weights kept, as before the train
    # loop turned it off under mixed precision: the change, side by side with what it replaced
    peft_input_cast: bool = False

    @property
    def label(self) -> str:
        size = str(self.token_budget) if self.token_budget else f"rows{self.rows}"
        return (f"{self.packing}:{size}" + (":gc" if self.gradient_checkpointing else "")
                + (":exp" if self.expandable_segments else "") + (":cast" if self.peft_input_cast else ""))


def parse_grid(text: str) -> list[TrainSetting]:
    """`padded:rows4,packed:4096,packed:16384:gc` -> one TrainSetting per item: packing (auto,
    packed, padded), then rowsN (N rows a step) or a token budget, then optionally `gc` (gradient
    checkpointing), `exp` (the allocator's expandable segments) and `cast` (peft's input cast kept),
    in that order."""
    settings = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        parts = item.split(":")
        flags = parts[2:]
        known = [f for f in ("gc", "exp", "cast") if f in flags]  # in order, each once
        ok = len(parts) >= 2 and parts[0] in ("auto", "packed", "padded") and flags == known
        size = parts[1] if len(parts) > 1 else ""
        rows = size.removeprefix("rows")
        if not ok or not (rows if size.startswith("rows") else size).isdigit() or int(rows or size) < 1:
            raise ValueError(f"--train-grid item {item!r}: expected PACKING:(rowsN|TOKENS)[:gc][:exp][:cast], "
                             "PACKING one of auto, packed, padded")
        budget = 0 if size.startswith("rows") else int(size)
        settings.append(TrainSetting(parts[0], budget, int(rows) if budget == 0 else 0, "gc" in flags,
                                     "exp" in flags, "cast" in flags))
    return settings


@contextlib.contextmanager
def keep_peft_input_cast(keep: bool):
    """With keep: prefbench.train's turning off of peft's LoRA input cast (peft.helpers.
    disable_input_dtype_casting, under mixed precision) is itself turned off, so the cell runs the
    train loop as it was before that change."""
    if not keep:
        yield
        return
    with mock.patch.object(prefbench.train, "disable_input_dtype_casting",
                           lambda model, active: contextlib.nullcontext()):
        yield


def set_expandable_segments(on: bool) -> None:
    """The CUDA caching allocator's expandable_segments (as PYTORCH_CUDA_ALLOC_CONF sets it), for the
    blocks allocated from now on: the cache emptied first."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    setting = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or torch.cuda.memory._set_allocator_settings
    setting(f"expandable_segments:{on}")


def allocator_counts() -> dict:
    """Cumulative counts of the caching allocator: cudaMalloc calls and retries (a retry frees every
    cached block and synchronises the device: what fragmentation costs)."""
    if not torch.cuda.is_available():
        return {}
    st = torch.cuda.memory_stats()
    return {k: st.get(k, 0) for k in ("num_alloc_retries", "num_device_alloc", "num_device_free")}


def train_rows(lengths: np.ndarray, setting: TrainSetting, steps: int) -> np.ndarray:
    """The first of `lengths` that make at least `steps` steps of `setting` (fewer if there are
    not enough rows): rows x steps rows, or rows summing to steps x token_budget tokens (a batch
    holds at most the budget, so that is at least `steps` batches)."""
    if not setting.token_budget:
        return lengths[: setting.rows * steps]
    enough = np.searchsorted(np.cumsum(lengths), steps * setting.token_budget) + 1
    return lengths[:enough]


def base_problems(model) -> list[str]:
    """What a train cell may have left on the base model that the next cell must not inherit."""
    found = []
    if any("lora_" in n for n, _ in model.named_modules()):
        found.append("LoRA layers left")
    if any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()):  # the layers' flag
        found.append("gradient checkpointing still on")
    if hasattr(model, "_require_grads_hook"):
        found.append("input-require-grads hook left")
    if hasattr(model, "peft_config"):
        found.append("peft_config left")
    return found


def model_cfg(name: str, attn: str, kernels: str, lora_r: int, max_length: int, batch: int,
              train_batch: int = 4, packing: str = "padded", train_token_budget: int = 0,
              gradient_checkpointing: bool = False) -> ModelParams:
    """`packing` is read by training only here: the inference cells time padded batches
    (benchmarks/packed.py times packed inference)."""
    return ModelParams(pretrained=name, dtype="bfloat16", attn_implementation=attn, quantization="none",
                       lora_r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, lora_target_modules=LORA_TARGETS,
                       max_length=max_length, train_batch_size=train_batch, train_token_budget=train_token_budget,
                       eval_batch_size=batch, gradient_checkpointing=gradient_checkpointing, compile=False,
                       kernels=kernels,
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
        if not a.infer:  # train cells only: no fp32 reference, no inference cells
            cast_parameters_(model, torch.bfloat16)
            kernels = "none"
            if auto_kernels == "liger":
                try:
                    apply_kernels(model, "liger")
                    kernels = "liger"
                except Exception as e:
                    self.skip(f"{type(e).__name__}: {e}", model=name, kernels="liger")
            if a.train and self.set_attn(model, auto_attn, name):
                self.train_grid(model, config, n_non_emb, name, auto_attn, kernels)
            del model
            self.save()
            return
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
            self.train_grid(merged, config, n_non_emb, name, auto_attn,
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

    def train_grid(self, model, config, n_non_emb, name, attn, kernels):
        """One train cell per setting of --train-grid (or the one of --train-packing,
        --train-token-budget, --train-batch), in order. A setting without checkpointing whose
        tokens per step are at least those of one that ran out of memory is not tried; one whose
        estimated time (twice its tokens at the last cell's rate, 1.5x slower with checkpointing
        after a cell without) exceeds what is left is skipped."""
        a = self.args
        settings = parse_grid(a.train_grid) if a.train_grid else [
            TrainSetting(a.train_packing, a.train_token_budget, 0 if a.train_token_budget else a.train_batch, False)]
        oom_at, rate, rate_gc = {}, None, False  # oom_at: per peft_input_cast (the cast's copies take memory)
        all_lengths = self.lengths(a.train_length, seed=3)
        for s in settings:
            tags = {"model": name, "train": True, "setting": s.label,
                    "gradient_checkpointing": s.gradient_checkpointing}
            lengths = train_rows(all_lengths, s, a.train_steps)
            step_tokens = s.token_budget or s.rows * a.train_length
            smallest_oom = oom_at.get(s.peft_input_cast)
            if smallest_oom is not None and not s.gradient_checkpointing and step_tokens >= smallest_oom:
                self.skip(f"not tried: {smallest_oom} tokens a step ran out of memory without checkpointing", **tags)
                continue
            slower = 1.5 if s.gradient_checkpointing and not rate_gc else 1.0
            estimate = 2 * lengths.sum() / rate * slower if rate else 30.0
            if self.left() < estimate + 10:
                self.skip(f"time budget: {self.left():.0f} s left, about {estimate:.0f} s needed", **tags)
                continue
            cell = self.train_cell(model, config, n_non_emb, name, attn, kernels, s, lengths)
            if cell is None:
                continue
            if cell.get("oom"):
                oom_at[s.peft_input_cast] = min(oom_at.get(s.peft_input_cast, step_tokens), step_tokens)
                continue
            rate, rate_gc = cell["tokens_per_second"], s.gradient_checkpointing

    def train_cell(self, model, config, n_non_emb, name, attn, kernels, s: TrainSetting, lengths) -> dict | None:
        """LoRA r=16 training steps through prefbench.train.train on real-length rows (the train stage's
        own batching: length-bucketed shuffled batches of `s.rows` rows with dynamic padding, or
        token-budget batches), packed or padded as `s.packing` resolves, gradient checkpointing as
        the pipeline applies it (add_lora). The base is left as it was: peft's unload removes the
        adapter, checkpointing and the input-grad hook that add_lora turned on are turned off.
        Returns the cell, {"oom": True} when it ran out of memory, None on another failure."""
        a, dev = self.args, self.dev
        cfg = model_cfg(name, attn, kernels, 16, a.train_length, a.batch, s.rows or 1, s.packing, s.token_budget,
                        s.gradient_checkpointing)
        packed = resolve_packing(s.packing, attn, "--train-grid packing")
        tp = TrainParams(epochs=1, learning_rate=1e-4, warmup_ratio=0.0, weight_decay=0.0, grad_accum_steps=1,
                         max_grad_norm=1.0, seed=0, log_every=1000, checkpoint_every=0, devices=1)
        seqs = self.sequences(lengths, config.vocab_size, seed=3)
        labels = np.zeros(len(seqs), dtype=np.int64)
        tags = {"model": name, "train": True, "setting": s.label, "gradient_checkpointing": s.gradient_checkpointing,
                "attn": attn, "kernels": kernels}
        exp = s.expandable_segments and dev.type == "cuda"
        if exp:
            set_expandable_segments(True)
        lora = add_lora(model, cfg)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        failure = None
        try:
            # Warm-up: one untimed pass over the same rows, batches and shapes (same seed), so that
            # flash-attn-4's and Triton's per-shape compiles are not timed: the steady state.
            # --train-timed-seed: the timed pass on other batches of the same rows (a long run's
            # batches never repeat).
            with keep_peft_input_cast(s.peft_input_cast):
                warm = train(lora, seqs, labels, cfg, tp, 0, dev)
                counts = allocator_counts()
                r = train(lora, seqs, labels, cfg, dataclasses.replace(tp, seed=a.train_timed_seed), 0, dev)
            counts = {k: v - counts[k] for k, v in allocator_counts().items()}
        except Exception as e:  # out of memory included (BatchOutOfMemoryError names the budget)
            failure = (f"{type(e).__name__}: {e}", "out of memory" in str(e).lower())
        finally:
            lora.unload()  # peft's own removal of the LoRA layers: the base model is left as it was
            if s.gradient_checkpointing:
                model.gradient_checkpointing_disable()
                model.disable_input_require_grads()
            if exp:
                set_expandable_segments(False)
        problems = base_problems(model)
        if problems:  # the next cell would inherit them: stop this model's grid
            raise RuntimeError(f"the base model after the {s.label} cell: {'; '.join(problems)}")
        if failure:  # the traceback (activations of the failed step) is gone by now: free the memory
            gc.collect()
            torch.cuda.empty_cache() if dev.type == "cuda" else None
            self.skip(failure[0], oom=failure[1], **tags)
            return {"oom": True} if failure[1] else None
        fl = lora_train_flops(config, n_non_emb, lengths)
        sheet = self.r["peak_bf16_flops_datasheet"]
        batch = f"up to {s.token_budget} tokens" if s.token_budget else f"{s.rows} rows"
        cell = {"model": name, "attn": attn, "kernels": kernels, "path": "default", "lora_r": 16,
                "setting": s.label, "batch": f"{batch}, real lengths <= {a.train_length}",
                "packing": "packed" if packed else "padded", "token_budget": s.token_budget,
                "rows_per_step": s.rows or None, "gradient_checkpointing": s.gradient_checkpointing,
                "warmup": "one untimed pass over the same batches (every shape compiled first)",
                "warmup_seconds": warm["train_seconds"], "rows": len(seqs), "steps": r["steps"],
                "tokens": int(lengths.sum()), "tokens_per_step": r["tokens"] / r["steps"],
                "final_loss": r["final_loss"],
                "seconds_per_step": r["train_seconds"] / r["steps"], "tokens_per_second": r["tokens_per_second"],
                "model_tflops": fl / 1e12, "mfu": mfu(fl, r["train_seconds"], self.r["peak_bf16_flops"]),
                "mfu_datasheet": mfu(fl, r["train_seconds"], sheet) if sheet else None,
                "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if dev.type == "cuda" else None,
                "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 1e9, 2) if dev.type == "cuda" else None,
                "expandable_segments": s.expandable_segments, "timed_pass_allocator": counts,
                "peft_input_cast": s.peft_input_cast,
                "timed_batches": "the warm-up's" if a.train_timed_seed == 0 else f"others (seed {a.train_timed_seed})",
                "base_clean_after": True}
        self.r["train"].append(cell)
        self.save()
        print(f"train {name} {s.label} ({attn}, kernels={kernels}, {cell['packing']}): "
              f"{cell['seconds_per_step']:.3f} s/step, {cell['tokens_per_step']:.0f} tokens/step, "
              f"{cell['tokens_per_second']:.0f} tokens/s, MFU {cell['mfu']:.3f}, mem {cell['peak_memory_gb']} GB "
              f"(reserved {cell['peak_reserved_gb']}), allocator {counts}, loss {r['final_loss']:.3f}", flush=True)
        return cell


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
                   help="steps a train cell takes at least: the first of the --rows rows that make them")
    p.add_argument("--train-packing", choices=["auto", "packed", "padded"], default="auto",
                   help="as models.<m>.packing for the train cell (auto: packed on flash_attention_*)")
    p.add_argument("--train-token-budget", type=int, default=0,
                   help="as models.<m>.train_token_budget: tokens per step (0: --train-batch rows per step)")
    p.add_argument("--train-grid", help="train cells, e.g. padded:rows4,packed:4096,packed:16384:gc "
                   "(PACKING:(rowsN|TOKENS)[:gc]); overrides --train-packing, --train-token-budget, --train-batch")
    p.add_argument("--train-timed-seed", type=int, default=0,
                   help="train.seed of each train cell's timed pass (0: the warm-up's batches again; another: "
                   "other batches of the same rows, which padded cells may meet uncompiled)")
    p.add_argument("--infer", action=argparse.BooleanOptionalAction, default=True,
                   help="--no-infer: train cells only (no fp32 reference, no inference cells)")
    p.add_argument("--budget-s", type=float, default=520)
    p.add_argument("--only-default", action="store_true", help="only the default cell (with --compile: the compile "
                   "break-even)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="also the default path under compile: true, with its break-even row count")
    p.add_argument("--kernels", choices=["none", "liger"], help="instead of kernels auto (cells not marked default)")
    Run(p.parse_args()).run()


if __name__ == "__main__":
    main()
