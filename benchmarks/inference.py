"""Inference per model: the path `dvc repro`'s evaluate stage runs on this card, and the padded
path beside it, each checked against fp32 eager on the same weights, then profiled by GPU kernel.

Per model (models/<name>: full-size architecture, random-init weights, real arena lengths):
  1. fp32 eager logits on CHECK_ROWS of the timed rows (spread over the lengths): the reference
     (Gemma2's softcaps applied); then the same rows through the plain model in the run's dtype
     with eager attention: the error that dtype brings by itself, the yardstick of every cell.
  2. The evaluate stage's model: weights in the resolved dtype, attention and kernels as `auto`
     resolves them here, a LoRA adapter added and merged (`prefbench.models.prepare_for_inference`).
  3. Cells, each `reps` passes over the same rows, the first after the pipeline's own warm-up:
       default: what evaluate runs (`prefbench.infer.packs`: packed forwards of `token_budget`
                tokens where the attention takes packed rows, else padded batches)
       padded:  length-sorted batches of eval_batch_size rows padded to the multiple evaluate uses
     seconds = the median pass; MFU = model FLOPs of the real tokens (prefbench.flops) / seconds /
     peak, against the bf16 matmul peak measured in this run and the datasheet's.
  4. torch.profiler over one more pass of the default cell: device time per sample by kernel
     category (matmuls, attention, fused kernels, the rest), the "where does the time go".
  5. fp8: the same merged model with `quantization: fp8` (prefbench.models.quantize_fp8_: torchao,
     row-wise scaled FP8 matmuls, the linears compiled), the default layout, timed and profiled the
     same way, its error against fp32 eager beside bf16's; fp8_eager: the linears uncompiled, for the
     record. On cards with FP8 matmuls (compute capability >= 8.9); elsewhere the reason is kept.
"""

from __future__ import annotations

import gc
from collections import defaultdict

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from benchmarks.card import ROOT
from benchmarks.lengths import bench_lengths, bench_sequences
from benchmarks.settings import bench_params
from prefbench.flops import forward_flops, mfu
from prefbench.batching import pad_multiple_for
from prefbench.infer import packs, predict
from prefbench.lora import add_lora
from prefbench.config import ParamsError
from prefbench.models import (apply_kernels, check_fp8, compile_fp8_linears, count_parameters, label_config_kwargs,
                              prepare_for_inference, quantize_fp8_, resolve_attention, resolve_dtype, resolve_kernels)
from prefbench.packing import predict_packed

CHECK_ROWS = 16  # timed rows also run in fp32 eager
# A cell passes its check when its error against fp32 eager (max |diff| / max |ref|) is at most
# CHECK_FACTOR x the plain model's in the same dtype with eager attention, plus CHECK_SLACK: fused
# kernels, packing and the merged adapter may round differently, but must not add error of their
# own. (bf16 keeps 8 bits of mantissa: over 32-42 layers of random-init weights the plain model's
# own error reaches several percent of the largest logit.)
CHECK_FACTOR, CHECK_SLACK = 1.5, 0.01
PAD_ID = 0  # bench_sequences draws no id below 10

KERNEL_CATEGORIES = (  # GPU kernel name fragments -> category, first match wins (lower-case)
    ("attention", ("flash", "fmha", "attention", "flex", "softmax")),
    ("matmul", ("gemm", "nvjet", "xmma", "cutlass", "wgmma", "splitk", "matmul", "aten::mm", "aten::addmm", "aten::bmm")),
    ("quantize", ("dequant", "quantize", "float8", "fp8", "int8", "igemm", "4bit", "nf4", "amax", "scale")),
    ("fused_norm_rope_act", ("_rms_norm", "_rope", "_swiglu", "_geglu", "liger")),
    ("copy_cast", ("copy", "cast", "convert", "fill", "cat")),
    ("elementwise_reduce", ("elementwise", "vectorized", "reduce", "tanh", "mul", "add", "rsqrt", "pow", "mean", "sum")),
)


def kernel_category(name: str) -> str:
    low = name.lower()
    return next((cat for cat, keys in KERNEL_CATEGORIES if any(k in low for k in keys)), "other")


def errors(logits: np.ndarray, ref: np.ndarray) -> dict:
    """Against the fp32 eager reference: max |diff| / max |ref|, ||diff|| / ||ref||, all finite."""
    d = logits.astype(np.float64) - ref
    return {"max_rel_error": float(np.abs(d).max() / (np.abs(ref).max() + 1e-12)),
            "rel_l2_error": float(np.linalg.norm(d) / (np.linalg.norm(ref) + 1e-12)),
            "finite": bool(np.isfinite(logits).all())}


def judged(err: dict, plain: dict) -> dict:
    """`err` with the plain model's error beside it and the verdict (see CHECK_FACTOR)."""
    bound = CHECK_FACTOR * plain["max_rel_error"] + CHECK_SLACK
    return {**err, "plain_eager_max_rel_error": plain["max_rel_error"], "bound": bound,
            "within_tolerance": err["finite"] and err["max_rel_error"] <= bound}


def cast_parameters_(model, dtype: torch.dtype) -> None:
    """Cast weights only: model.to(dtype) would also cast buffers such as RoPE's inv_freq, which
    must stay fp32 (a bf16 inv_freq shifts positions by whole radians at 1000 tokens)."""
    for p in model.parameters():
        p.data = p.data.to(dtype)


def profile_pass(run_once, rows: int, dev: torch.device) -> dict:
    """Device milliseconds per sample by kernel category over one pass of `run_once` (CPU time of
    aten ops on a CPU), and the 8 costliest kernels."""
    from torch.profiler import ProfilerActivity, profile

    cuda = dev.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        run_once()
    by_cat, by_kernel = defaultdict(float), defaultdict(float)
    for e in prof.key_averages():
        on_device = "CUDA" in str(getattr(e, "device_type", ""))
        if cuda != on_device or (not cuda and not e.key.startswith("aten::")):
            continue
        ms = (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1e3
        by_cat[kernel_category(e.key)] += ms
        by_kernel[e.key[:90]] += ms
    total = sum(by_cat.values())
    return {"ms_per_sample": round(total / rows, 4),
            "by_category_ms_per_sample": {k: round(v / rows, 4) for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])},
            "share": {k: round(v / total, 4) for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])} if total else {},
            "top_kernels_ms_per_sample": {k: round(v / rows, 4)
                                          for k, v in sorted(by_kernel.items(), key=lambda kv: -kv[1])[:8]}}


def measure_model(name: str, rows: int, reps: int, dev: torch.device, peak: float, sheet: float | None,
                  log=print, fp8: bool = True) -> dict:
    """Both cells and the profile of one model (see the module docstring)."""
    on_gpu = dev.type == "cuda"
    params = bench_params(name, on_gpu)
    cfg, ev = params.selected, params.evaluate
    config = AutoConfig.from_pretrained(ROOT / "models" / name, **label_config_kwargs())
    config.pad_token_id = PAD_ID
    capability = torch.cuda.get_device_capability(dev) if on_gpu else None
    torch.manual_seed(0)
    with torch.device(dev):
        model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32,
                                                               attn_implementation="eager").eval()
    counts = count_parameters(model)
    lengths = bench_lengths(rows, cfg.max_length, seed=0)
    seqs = bench_sequences(lengths, config.vocab_size, seed=2)
    picked = np.argsort(lengths, kind="stable")[:: max(1, len(seqs) // CHECK_ROWS)][:CHECK_ROWS]
    check = [seqs[i] for i in picked]
    ref = predict(model, check, 4, PAD_ID, dev, warmup_batches=0)["logits"].astype(np.float64)

    # The evaluate stage's model (prefbench.infer.LLMRunner through prefbench.models.load_copies).
    dtype = resolve_dtype(cfg.dtype, dev.type, capability)
    attn = resolve_attention(cfg.attn_implementation, config, dev.type, capability)
    kernels = resolve_kernels(cfg.kernels, dev.type, capability, family=config)
    cast_parameters_(model, dtype)
    plain = errors(predict(model, check, 4, PAD_ID, dev, warmup_batches=0)["logits"], ref)
    log(f"{name}: fp32 eager reference on {len(picked)} rows; plain {dtype} eager: max rel. error "
        f"{plain['max_rel_error']:.4f}")
    model.set_attn_implementation(attn)
    apply_kernels(model, kernels)
    model = prepare_for_inference(add_lora(model, cfg), cfg).eval()  # B = 0 at init: the base's function
    packed = packs(cfg, attn, params.model)
    flops = forward_flops(config, counts["params_non_embedding"], lengths)
    common = {"attn": attn, "kernels": kernels, "dtype": str(dtype).removeprefix("torch."), "rows": len(seqs),
              "tokens": int(lengths.sum()), "max_length": cfg.max_length}

    def padded_once(warm: bool) -> dict:
        return predict(model, seqs, cfg.eval_batch_size, PAD_ID, dev, warmup_batches=ev.warmup_batches if warm else 0,
                       warmup_shapes=ev.warmup_shapes and warm, pad_multiple=pad_multiple_for(dev), cfg=cfg,
                       name=params.model)

    def packed_once(warm: bool) -> dict:
        return predict_packed(model, seqs, cfg.token_budget, PAD_ID, dev, warmup=warm)

    def cell(once, layout: str, label: str | None = None) -> dict:
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(dev)
        passes = [once(True)] + [once(False) for _ in range(reps - 1)]
        secs = float(np.median([p["seconds"] for p in passes]))
        first = passes[0]
        out = {**common, "layout": layout, "packed": layout == "packed",
               "s_per_sample": secs / len(seqs), "seconds_passes": [round(p["seconds"], 4) for p in passes],
               "warmup_seconds": round(first["warmup_seconds"], 2),
               "tokens_per_s": first["tokens"] / secs, "computed_tokens": first["padded_tokens"],
               "padding_share": round(1 - first["tokens"] / first["padded_tokens"], 4),
               "mfu": mfu(flops, secs, peak), "mfu_datasheet": mfu(flops, secs, sheet) if sheet else None,
               "peak_memory_gb": round(torch.cuda.max_memory_allocated(dev) / 1e9, 2) if on_gpu else None,
               "check": judged(errors(first["logits"][picked], ref), plain),
               **({"token_budget": cfg.token_budget, "packs": first["packs"]} if layout == "packed"
                  else {"batch_size": cfg.eval_batch_size, "batch_shapes": first["batch_shapes"]})}
        on_sheet = f" (datasheet {out['mfu_datasheet']:.3f})" if sheet else ""
        tag = f" {label}" if label else (" [default]" if (layout == "packed") == packed else "")
        log(f"{name} {layout}{tag} ({attn}, kernels {kernels}): {out['s_per_sample']:.5f} s/sample, "
            f"MFU {out['mfu']:.3f}{on_sheet}, max rel. error vs fp32 eager {out['check']['max_rel_error']:.4f} "
            f"(plain eager {plain['max_rel_error']:.4f}: {'ok' if out['check']['within_tolerance'] else 'OVER'})")
        return out

    padded = cell(padded_once, "padded")
    default = cell(packed_once, "packed") if packed else dict(padded)
    profile = profile_pass(lambda: (packed_once if packed else padded_once)(False), len(seqs), dev)
    log(f"{name} profile of the default path: {profile['by_category_ms_per_sample']} ms/sample")
    layout = "packed" if packed else "padded"
    if fp8:
        fp8, fp8_eager = fp8_cells(model, cfg, dev, dtype, capability,
                                   lambda label: cell(packed_once if packed else padded_once, layout, label), log)
    else:
        fp8 = fp8_eager = {"skipped": "not asked for this model (the fp8 cells run for --stage-models)"}
    for c in (fp8, fp8_eager):
        if "s_per_sample" in c:
            c["over_bf16_default"] = c["s_per_sample"] / default["s_per_sample"]
            c["bf16_default_max_rel_error"] = default["check"]["max_rel_error"]
    if "s_per_sample" in fp8:
        fp8["profile"] = profile_pass(lambda: (packed_once if packed else padded_once)(False), len(seqs), dev)
        log(f"{name} fp8: {fp8['over_bf16_default']:.3f}x the bf16 default's time; profile "
            f"{fp8['profile']['by_category_ms_per_sample']} ms/sample")
    return {"family": config.model_type, "layers": config.num_hidden_layers, **counts, "flops_forward": flops,
            "default": default, "padded": padded, "profile": profile, "fp8": fp8, "fp8_eager": fp8_eager}


def fp8_cells(model, cfg, dev: torch.device, dtype: torch.dtype, capability, measure, log=print) -> tuple[dict, dict]:
    """(fp8, fp8_eager): the default cell again with the merged model's linear layers in FP8, in
    place (the bf16 cells are done). fp8_eager first, torchao's quantised linears run eagerly; then
    fp8, what `quantization: fp8` runs (prefbench.models.quantize_fp8_: the linears compiled). A
    card or install without FP8 gives {"skipped": why} for both; a failure of one is kept as
    {"failed": ...} and the other still runs. FP8's error against fp32 eager is reported beside
    the bf16 default's, not bounded by the bf16 yardstick: e4m3 keeps 3 bits of mantissa."""
    try:
        check_fp8(cfg, dev, dtype, capability)
    except ParamsError as e:
        log(f"fp8 cells skipped: {e}")
        return {"skipped": str(e)}, {"skipped": str(e)}
    out = {}
    for label, prepare in (("fp8_eager", lambda: quantize_fp8_(model, compile_linears=False)),
                           ("fp8", lambda: compile_fp8_linears(model))):
        try:
            prepare()
            out[label] = measure(label)
        except Exception as e:  # noqa: BLE001  recorded; the bf16 cells and the other fp8 cell stand
            out[label] = {"failed": f"{type(e).__name__}: {str(e)[:600]}"}
            log(f"{label} cell failed: {out[label]['failed']}")
            if label == "fp8_eager":
                return {"failed": "not run: " + out[label]["failed"]}, out[label]
    return out["fp8"], out["fp8_eager"]


def run(models: list[str], rows: int, reps: int, dev: torch.device, peak: float, sheet: float | None,
        record, log=print, fp8_models: list[str] | None = None) -> dict:
    """Every model's cells (the fp8 ones for `fp8_models`, default all); `record(name, result_or_failure)`
    after each, so a failure keeps the rest."""
    out = {}
    for name in models:
        try:
            out[name] = measure_model(name, rows, reps, dev, peak, sheet, log,
                                      fp8=fp8_models is None or name in fp8_models)
        except Exception as e:  # noqa: BLE001  one model's failure is recorded, the other still runs
            out[name] = {"failed": f"{type(e).__name__}: {str(e)[:600]}"}
            log(f"{name}: inference failed: {out[name]['failed']}")
        gc.collect()  # the model went with measure_model's frame: give its memory back before the next
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        record(name, out[name])
    return out
