"""The Kaggle 2xT4 software path, measured on the card at hand: why Gemma2-9B took about 2x Llama3-8B there.

On a T4 (compute capability 7.5, 16 GB, no bf16, no flash-attn-4, no Liger) `auto` resolves to
fp16, Gemma2 eager attention (its softcap) and Llama3 sdpa, no fused kernels, padded batches (no
varlen attention kernel: rows cannot be packed) of the largest of T4_BATCHES rows that fits, and a
9B model fits only quantised. This part runs
exactly that path (prefbench.models.load_model, a LoRA adapter kept unmerged as evaluate keeps it on
a quantised base, prefbench.infer.predict) on this GPU with its memory capped at T4_MEMORY_GB
(`torch.cuda.set_per_process_memory_fraction`; the random-init weights are made and quantised before
the cap: a real checkpoint loads quantised layer by layer within it). Cells:

  gemma2 4bit            what the public Gemma2 notebooks ran (NF4, eager softcap attention)
  llama3 8bit, 4bit      what the Llama3 notebooks ran (LLM.int8), and the same NF4 as Gemma2
  gemma2 4bit, sdpa      timing only: softcap dropped so sdpa can run (wrong outputs): the price of
                         eager attention

The Gemma2 / Llama3 ratio of the notebooks (4bit over 8bit) is then the product of three measured
factors: attention (eager over sdpa, Gemma2), the rest of the architecture (Gemma2 sdpa over Llama3
4bit: layers, width, vocabulary; compare the FLOP ratio) and the quantisation kernels (Llama3 4bit over
8bit). Hours for 25k rows on 2xT4 are projections from these timings (PROJECTION), never measured.
"""

from __future__ import annotations

import dataclasses
import gc

import numpy as np
import torch
from transformers import AutoConfig

from benchmarks.card import ROOT
from benchmarks.lengths import bench_lengths, bench_sequences
from benchmarks.settings import bench_params
from prefbench.batching import pad_multiple_for
from prefbench.device_errors import BatchOutOfMemoryError
from prefbench.flops import forward_flops
from prefbench.infer import predict
from prefbench.lora import add_lora
from prefbench.models import count_parameters, load_model, prepare_for_inference, resolve_attention

T4_CAPABILITY = (7, 5)
T4_MEMORY_GB = 15.0  # a T4's 16 GB less what the CUDA context and the driver keep
# rows per padded batch at max_length 1024, the first that fits the cap (eager Gemma2: 8 x 16 heads x 1024^2
# fp32 scores = 0.5 GB a layer); on one H100 at 1c74f60 Gemma2-9B 4-bit did not fit 15 GB at 8 rows
T4_BATCHES = (8, 4, 2, 1)
T4_BATCH = T4_BATCHES[0]
PAD_ID = 0  # bench_sequences draws no id below 10
# (cell, model folder, quantization, attention override, softcap kept)
CELLS = (("gemma2_4bit", "gemma2-9b", "4bit", None, True),
         ("llama3_8bit", "llama3-8b", "8bit", None, True),
         ("llama3_4bit", "llama3-8b", "4bit", None, True),
         ("gemma2_4bit_sdpa_no_softcap", "gemma2-9b", "4bit", "sdpa", False))
# Projection to a T4 from this card's time: compute-bound kernels scale with the fp16 tensor peak
# (T4 65 TFLOP/s, datasheet), memory-bound ones with the bandwidth (T4 320 GB/s); the two bound the
# T4's time from below (bandwidth ratio) and above (peak ratio) when this card is faster in both.
PROJECTION = {"t4_fp16_tflops": 65.0, "t4_memory_gb_s": 320.0, "kaggle_rows": 25000, "gpus": 2}
CARD_SPECS = {"H100": (989.0, 3350.0), "H200": (989.0, 4800.0)}  # dense fp16 TFLOP/s, GB/s (SXM datasheets)


def index(dev: torch.device) -> int:
    return dev.index if dev.index is not None else torch.cuda.current_device()


def t4_params(name: str, quantization: str, attn: str | None):
    """The params `auto` resolves to on a T4, for models/<name> with `quantization`."""
    config = AutoConfig.from_pretrained(ROOT / "models" / name)
    t4_attn = attn or resolve_attention("auto", config, "cuda", T4_CAPABILITY, fa4_installed=False)
    return bench_params(name, True, dtype="float16", quantization=quantization, kernels="none",
                        attn_implementation=t4_attn, packing="padded", eval_batch_size=T4_BATCH)


def drop_softcap_(model) -> None:
    """Timing ablation: no attention softcap anywhere, so sdpa (which cannot apply it) computes the
    layers; `_supports_sdpa` is False for Gemma2 because of the softcap, so the switch is made here."""
    model.config.attn_logit_softcapping = None
    for module in model.modules():
        if hasattr(module, "attn_logit_softcapping"):
            module.attn_logit_softcapping = None
        if hasattr(module, "config") and hasattr(module.config, "_attn_implementation"):
            module.config._attn_implementation = "sdpa"


def measure_cell(cell: str, name: str, quantization: str, attn: str | None, softcap: bool, rows: int, reps: int,
                 dev: torch.device, log=print) -> dict:
    params = t4_params(name, quantization, attn)
    cfg, ev = params.selected, params.evaluate
    model, dtype, _ = load_model(cfg if softcap else dataclasses.replace(cfg, attn_implementation="eager"),
                                 PAD_ID, dev, seed=0)
    if not softcap:
        drop_softcap_(model)
    counts = count_parameters(model)
    # the adapter as evaluate loads it onto a quantised base (PeftModel.from_pretrained): LoRA layers
    # kept (no merge) in fp32, the score head's copy in the base's fp16 (add_lora, made for training,
    # gives it fp32 master weights)
    model = add_lora(model, dataclasses.replace(cfg, quantization="none"))
    for n, p in model.named_parameters():
        if "lora_" not in n and p.dtype == torch.float32:
            p.data = p.data.to(dtype)
    model = prepare_for_inference(model, cfg).eval()
    gc.collect()
    torch.cuda.empty_cache()
    weights_gb = torch.cuda.memory_allocated(dev) / 1e9
    reserved_gb = torch.cuda.memory_reserved(dev) / 1e9  # the cap counts the allocator's reserve
    log(f"t4 path {cell}: {quantization} {name} loaded, {weights_gb:.2f} GB allocated, {reserved_gb:.2f} GB "
        f"reserved before the cap")
    total = torch.cuda.get_device_properties(dev).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, T4_MEMORY_GB * 1e9 / total), index(dev))
    torch.cuda.reset_peak_memory_stats(dev)
    config = model.config
    lengths = bench_lengths(rows, cfg.max_length, seed=0)
    seqs = bench_sequences(lengths, config.vocab_size, seed=2)
    too_big = []
    for batch in T4_BATCHES:  # the largest batch that fits the cap, as a T4 user lowers eval_batch_size
        cfg = dataclasses.replace(cfg, eval_batch_size=batch)
        try:
            passes = [predict(model, seqs, batch, PAD_ID, dev, warmup_batches=ev.warmup_batches if i == 0 else 0,
                              warmup_shapes=ev.warmup_shapes and i == 0, pad_multiple=pad_multiple_for(dev), cfg=cfg,
                              name=params.model) for i in range(reps)]
            break
        except BatchOutOfMemoryError as e:
            too_big.append(batch)
            log(f"t4 path {cell}: batch {batch} does not fit {T4_MEMORY_GB:g} GB ({str(e)[:120]}); halving it")
            gc.collect()
            torch.cuda.empty_cache()
    else:
        raise BatchOutOfMemoryError(f"no batch of {', '.join(map(str, T4_BATCHES))} rows fits {T4_MEMORY_GB:g} GB "
                                    f"(weights and adapter: {weights_gb:.2f} GB allocated, {reserved_gb:.2f} GB reserved)")
    secs = float(np.median([p["seconds"] for p in passes]))
    out = {"model": name, "family": config.model_type, "quantization": quantization,
           "attention": config._attn_implementation, "softcap": softcap, "dtype": str(dtype).removeprefix("torch."),
           "kernels": "none", "layout": "padded", "batch_size": cfg.eval_batch_size, "batches_too_big": too_big,
           "rows": len(seqs),
           "tokens": int(lengths.sum()), "max_length": cfg.max_length,
           "s_per_sample": secs / len(seqs), "seconds_passes": [round(p["seconds"], 3) for p in passes],
           "weights_gb": round(weights_gb, 2), "peak_memory_gb": round(torch.cuda.max_memory_allocated(dev) / 1e9, 2),
           "memory_cap_gb": T4_MEMORY_GB, "finite": bool(np.isfinite(passes[0]["logits"]).all()),
           "flops_forward": forward_flops(config, counts["params_non_embedding"], lengths),
           "padding_share": round(1 - passes[0]["tokens"] / passes[0]["padded_tokens"], 4)}
    log(f"t4 path {cell} ({quantization}, {out['attention']}, fp16, batch {cfg.eval_batch_size}): {out['s_per_sample']:.4f} s/sample, "
        f"weights {out['weights_gb']} GB, peak {out['peak_memory_gb']} GB of {T4_MEMORY_GB}, finite {out['finite']}")
    return out


def summarise(cells: dict, card_name: str | None) -> dict:
    """The ratios, the three factors and the projection, from the cells that ran."""
    s = {k: v["s_per_sample"] for k, v in cells.items() if "s_per_sample" in v}
    out: dict = {}
    if {"gemma2_4bit", "llama3_8bit"} <= s.keys():
        out["ratio_gemma2_4bit_over_llama3_8bit"] = s["gemma2_4bit"] / s["llama3_8bit"]
    if {"gemma2_4bit", "llama3_4bit"} <= s.keys():
        out["ratio_gemma2_4bit_over_llama3_4bit"] = s["gemma2_4bit"] / s["llama3_4bit"]
    if set(s) >= {"gemma2_4bit", "gemma2_4bit_sdpa_no_softcap", "llama3_4bit", "llama3_8bit"}:
        out["factors"] = {
            "attention_eager_over_sdpa": s["gemma2_4bit"] / s["gemma2_4bit_sdpa_no_softcap"],
            "architecture_gemma2_sdpa_over_llama3_4bit": s["gemma2_4bit_sdpa_no_softcap"] / s["llama3_4bit"],
            "quantisation_llama3_4bit_over_8bit": s["llama3_4bit"] / s["llama3_8bit"],
            "flop_ratio": cells["gemma2_4bit"]["flops_forward"] / cells["llama3_4bit"]["flops_forward"]}
    spec = next((v for k, v in CARD_SPECS.items() if card_name and k in card_name), None)
    if spec:
        peak_ratio = spec[0] / PROJECTION["t4_fp16_tflops"]
        bw_ratio = spec[1] / PROJECTION["t4_memory_gb_s"]
        hours = PROJECTION["kaggle_rows"] / PROJECTION["gpus"] / 3600
        out["projection"] = {**PROJECTION, "card_fp16_tflops": spec[0], "card_memory_gb_s": spec[1],
                             "hours_2xT4": {k: [round(v * hours * bw_ratio, 2), round(v * hours * peak_ratio, 2)]
                                            for k, v in s.items()},
                             "label": "projection, not measured on a T4: [bandwidth-scaled, peak-scaled] hours"}
    return out


def run(rows: int, reps: int, dev: torch.device, record, log=print) -> dict:
    """Every cell; `record(cell, result_or_failure)` after each, so a failure keeps the rest."""
    out = {}
    if dev.type != "cuda":
        why = "the T4 path needs a CUDA GPU (bitsandbytes 4-bit / 8-bit, a memory cap)"
        for cell, *_ in CELLS:
            out[cell] = {"skipped": why}
            record(cell, out[cell])
        return out
    for cell, name, quantization, attn, softcap in CELLS:
        try:
            out[cell] = measure_cell(cell, name, quantization, attn, softcap, rows, reps, dev, log)
        except Exception as e:  # noqa: BLE001  one cell's failure is recorded, the others still run
            out[cell] = {"failed": f"{type(e).__name__}: {str(e)[:600]}"}
            log(f"t4 path {cell}: failed: {out[cell]['failed']}")
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, index(dev))
        gc.collect()
        torch.cuda.empty_cache()
        record(cell, out[cell])
    return out
