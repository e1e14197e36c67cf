"""The docs' generated blocks: tables made from the newest committed benchmark results and the
model configs, rendered into README.md and docs/*.md (`python -m benchmarks report`).

GPU blocks (this file) read benchmarks/results/<card>-<date>/headline.json; the CPU blocks
(benchmarks/cpu_report.py) read the committed metrics. No number in the docs is typed by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.card import ROOT
from benchmarks.docgen import UnknownBlockError, blocks_in, documents, render

RESULTS = ROOT / "benchmarks" / "results"
MODEL_NAMES = {"llama3-8b": "Llama3-8B", "gemma2-9b": "Gemma2-9B", "qwen2-7b": "Qwen2-7B", "mistral-7b": "Mistral-7B"}


def runs(results: Path = RESULTS) -> list[tuple[dict, Path]]:
    """(headline, folder) of every results folder with a headline.json, newest first (by its `date`)."""
    found = [(json.loads(p.read_text()), p.parent) for p in results.glob("*/headline.json")]
    return sorted(found, key=lambda hf: hf[0]["date"], reverse=True)


def compares(h: dict) -> bool:
    """Whether a run holds the comparison the docs are about: Llama3 and Gemma2 in its inference part."""
    return "flop_ratio_gemma2_over_llama3" in h


def t4_complete(h: dict) -> bool:
    """Whether a run's T4 part has all four cells (hence its factors and ratios)."""
    return "factors" in h.get("t4_path", {})


def newest_results(results: Path = RESULTS) -> Path:
    """The folder the docs render from: the newest run that compares Llama3 and Gemma2 (a run of a
    part or a model alone, say after a change to training, does not replace it; `newer_block` shows
    it), else the newest run."""
    found = runs(results)
    if not found:
        raise SystemExit(f"no */headline.json under {results}: run `python -m benchmarks run --out {results}/<card>-<date>`")
    return next((folder for h, folder in found if compares(h)), found[0][1])


def newest_with(folder: Path, has) -> Path:
    """The newest run beside `folder` (same results directory) whose headline passes `has`, else `folder`."""
    return next((p for h, p in runs(folder.parent) if has(h)), folder)


def load(folder: Path) -> dict:
    return json.loads((folder / "headline.json").read_text())


def label(name: str) -> str:
    return MODEL_NAMES.get(name, name)


def f(x, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def tflops(x) -> str:
    return "n/a" if x is None else f"{x / 1e12:.0f}"


def where(folder: Path) -> str:
    """The folder as the docs name it: relative to the repo's root where it lies inside."""
    folder = folder.resolve()
    return folder.relative_to(ROOT).as_posix() if folder.is_relative_to(ROOT) else folder.as_posix()


def card_line(h: dict, folder: Path) -> str:
    """Card, driver, versions, date and commit, linking the folder's MANIFEST.md (`{rel}`: the
    path from the doc to the repo's root, filled in by the caller)."""
    d = h["device"]
    return (f"{d['count']} x {d['name']}, driver {d.get('driver')}, torch {h['versions'].get('torch')}, "
            f"transformers {h['versions'].get('transformers')}, {h['date'][:10]}, commit {str(h['commit'])[:10]} "
            f"([`{where(folder)}`]({{rel}}{where(folder)}/MANIFEST.md))")


def models(h: dict) -> list[str]:
    return list(h.get("inference", {}) or h.get("train_stage", {}) or h.get("evaluate_stage", {}))


def headline_block(folder: Path, rel: str = "") -> str:
    """README: one row per model, the ratio under it, a link to docs/performance.md."""
    h = load(folder)
    rows = ["| model | default path s/sample (MFU) | padded s/sample (MFU) | fp8 s/sample (x bf16) | evaluate stage s/sample "
            "| train stage MFU, all steps / steady |", "|---|---|---|---|---|---|"]
    for name in models(h):
        inf = h.get("inference", {}).get(name)
        ev = h.get("evaluate_stage", {}).get(name)
        tr = h.get("train_stage", {}).get(name)
        cells = [f"{f(inf['default']['s_per_sample'])} ({f(inf['default']['mfu'], 2)})" if inf else "not run",
                 f"{f(inf['padded']['s_per_sample'])} ({f(inf['padded']['mfu'], 2)})" if inf else "not run",
                 (f"{f(inf['fp8']['s_per_sample'])} ({f(inf['fp8']['over_bf16_default'], 2)}x)"
                  if inf and "s_per_sample" in inf.get("fp8", {}) else "not run"),
                 f(ev["s_per_sample"]) if ev else "not run",
                 f"{f(tr['mfu'], 2)} / {f(tr['steady_mfu'], 2)}" if tr else "not run"]
        rows.append(f"| {label(name)} | " + " | ".join(cells) + " |")
    out = "\n".join(rows)
    if "flop_ratio_gemma2_over_llama3" in h:
        out += (f"\n\nGemma2-9B takes {f(h['s_per_sample_ratio_gemma2_over_llama3']['default'], 2)}x Llama3-8B's time "
                f"per sample on the default path ({f(h['s_per_sample_ratio_gemma2_over_llama3']['padded'], 2)}x padded) "
                f"for {f(h['flop_ratio_gemma2_over_llama3'], 2)}x its FLOPs on the same rows. MFU is against the bf16 "
                f"matmul peak measured in the same run ({tflops(h['peak_bf16_flops_measured'])} TFLOP/s).")
    t4_folder = newest_with(folder, t4_complete)
    t4_head = load(t4_folder)
    t4 = t4_head.get("t4_path", {})
    if "ratio_gemma2_4bit_over_llama3_8bit" in t4:
        card = "this card" if t4_folder == folder else f"an {t4_head['device']['name']} ({where(t4_folder)})"
        out += (f" On Kaggle's T4 software path (fp16, eager attention for Gemma2, no fused kernels, 15 GB), run on "
                f"{card}, Gemma2-9B 4-bit takes {f(t4['ratio_gemma2_4bit_over_llama3_8bit'], 2)}x Llama3-8B 8-bit's "
                f"time and {f(t4.get('ratio_gemma2_4bit_over_llama3_4bit'), 2)}x Llama3-8B 4-bit's.")
    out += f"\n\nMeasured on {card_line(h, folder).format(rel=rel)}; why, and the profiles: [docs/performance.md]({rel}docs/performance.md)."
    return out


def setup_block(folder: Path) -> str:
    h = load(folder)
    v = h["versions"]
    lines = [f"- Card: {card_line(h, folder).format(rel='../')}",
             "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
             f"- bf16 matmul peak: {tflops(h['peak_bf16_flops_measured'])} TFLOP/s measured (8192^3), "
             f"{tflops(h['peak_bf16_flops_datasheet'])} TFLOP/s datasheet",
             "- Command" + ("s: " if len(commands(h)) > 1 else ": ") + "; ".join(f"`{c}`" for c in commands(h))]
    settings = next(iter(h["parts"].values()))["settings"]
    max_length = next((r["default"].get("max_length") for r in h.get("inference", {}).values()), None)
    lines.append(f"- Rows: {settings['rows']} rows of real arena lengths (max_length {max_length}), random token ids; "
                 f"{settings['reps']} timed passes per inference cell (median); the train stage for at least "
                 f"{settings['steps']} optimizer steps")
    return "\n".join(lines)


def architecture_block(folder: Path) -> str:
    """From the shipped configs and the run's parameter counts."""
    from transformers import AutoConfig

    from prefbench.flops import head_dim

    h = load(folder)
    rows = ["| | " + " | ".join(label(n) for n in models(h)) + " |", "|---|" + "---|" * len(models(h))]
    cfgs = {n: AutoConfig.from_pretrained(ROOT / "models" / n) for n in models(h)}
    facts = [("layers", lambda c: c.num_hidden_layers), ("hidden size", lambda c: c.hidden_size),
             ("attention heads / KV heads", lambda c: f"{c.num_attention_heads} / {c.num_key_value_heads}"),
             ("head dim", head_dim), ("MLP width", lambda c: c.intermediate_size),
             ("vocabulary", lambda c: c.vocab_size),
             ("sliding window", lambda c: getattr(c, "sliding_window", None) or "none"),
             ("attention logit softcap", lambda c: getattr(c, "attn_logit_softcapping", None) or "none")]
    for what, get in facts:
        rows.append(f"| {what} | " + " | ".join(str(get(cfgs[n])) for n in models(h)) + " |")
    inf = h.get("inference", {})
    if inf:
        rows.append("| parameters (3-class classifier) | " + " | ".join(f"{inf[n]['params_total']:,}" for n in models(h)) + " |")
        rows.append("| forward GFLOPs per row, these rows | " + " | ".join(
            f"{inf[n]['flops_forward'] / inf[n]['default'].get('rows', 1) / 1e9:.3g}" if inf[n]['default'].get('rows')
            else "n/a" for n in models(h)) + " |")
    return "\n".join(rows)


def inference_block(folder: Path) -> str:
    h = load(folder)
    rows = ["| model | path | attention | kernels | layout | s/sample | tokens/s | MFU (measured peak) | MFU (datasheet) "
            "| padding | max rel. error vs fp32 eager (plain eager's) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in h.get("inference", {}).items():
        for path in ("default", "padded"):
            c = r[path]
            rows.append(f"| {label(name)} | {path} | {c['attn']} | {c['kernels']} | "
                        f"{'packed' if c['packed'] else 'padded'} | {f(c['s_per_sample'])} | {c['tokens_per_s']:,.0f} | "
                        f"{f(c['mfu'], 2)} | {f(c['mfu_datasheet'], 2)} | {c['padding_share']:.1%} | "
                        f"{f(c['max_rel_error'], 3)} ({f(c['plain_eager_max_rel_error'], 3)})"
                        f"{'' if c['checked'] else ' over the bound'} |")
    if "flop_ratio_gemma2_over_llama3" in h:
        r = h["s_per_sample_ratio_gemma2_over_llama3"]
        rows += ["", f"Gemma2-9B / Llama3-8B on the same rows: FLOPs {f(h['flop_ratio_gemma2_over_llama3'], 3)}x; "
                 f"time per sample {f(r['default'], 3)}x on the default path, {f(r['padded'], 3)}x padded."]
    return "\n".join(rows)


def profile_block(folder: Path) -> str:
    """Device time per sample by kernel category on the default path, and the Gemma2 - Llama3 gap."""
    h = load(folder)
    inf = h.get("inference", {})
    names = list(inf)
    cats = sorted({c for n in names for c in inf[n]["profile_ms_per_sample"]},
                  key=lambda c: -max(inf[n]["profile_ms_per_sample"].get(c, 0) for n in names))
    g = next((n for n in names if inf[n]["family"] == "gemma2"), None)
    l = next((n for n in names if inf[n]["family"] == "llama"), None)
    gap = g and l
    head = "| kernel category | " + " | ".join(f"{label(n)} ms/sample" for n in names) + (
        " | Gemma2 - Llama3 ms | share of the gap |" if gap else " |")
    rows = [head, "|---|" + "---|" * (len(names) + (2 if gap else 0))]
    total_gap = (sum(inf[g]["profile_ms_per_sample"].values()) - sum(inf[l]["profile_ms_per_sample"].values())) if gap else 0
    for c in cats + ["total"]:
        vals = {n: (sum(inf[n]["profile_ms_per_sample"].values()) if c == "total" else inf[n]["profile_ms_per_sample"].get(c, 0.0))
                for n in names}
        line = f"| {c} | " + " | ".join(f"{vals[n]:.3f}" for n in names)
        if gap:
            d = vals[g] - vals[l]
            line += f" | {d:+.3f} | {d / total_gap:.0%}" if total_gap else " | | "
        rows.append(line + " |")
    return "\n".join(rows)


def stages_block(folder: Path) -> str:
    h = load(folder)
    rows = ["| model | evaluate stage s/sample | over the default cell | train stage tokens/s | MFU all steps "
            "| steady MFU (second half) | MFU all steps (datasheet) | steps | token budget | checkpointing |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name in models(h):
        ev = h.get("evaluate_stage", {}).get(name, {})
        tr = h.get("train_stage", {}).get(name, {})
        rows.append(f"| {label(name)} | {f(ev.get('s_per_sample'))} | {f(ev.get('over_benchmark'), 3)} | "
                    f"{tr.get('tokens_per_s', 0):,.0f} | {f(tr.get('mfu'), 3)} | {f(tr.get('steady_mfu'), 3)} | "
                    f"{f(tr.get('mfu_datasheet'), 3)} | {tr.get('steps', 'n/a')} | {tr.get('token_budget', 'n/a')} | "
                    f"{tr.get('gradient_checkpointing', 'n/a')} |")
    return "\n".join(rows)


def fp8_block(folder: Path) -> str:
    """`quantization: fp8` beside the bf16 default path: time, ratio, error, where the time goes."""
    h = load(folder)
    rows = ["| model | bf16 default s/sample | fp8 s/sample | fp8 / bf16 | fp8, linears uncompiled / bf16 "
            "| max rel. error vs fp32 eager: fp8 (bf16) | fp8 device ms/sample by kernel category |",
            "|---|---|---|---|---|---|---|"]
    for name, r in h.get("inference", {}).items():
        c, e = r.get("fp8", {}), r.get("fp8_eager", {})
        if "s_per_sample" not in c:
            rows.append(f"| {label(name)} | {f(r['default']['s_per_sample'])} | not run: "
                        f"{str(c.get('skipped') or 'not measured')[:120]} | | | | |")
            continue
        prof = ", ".join(f"{k} {v:.2f}" for k, v in c.get("profile_ms_per_sample", {}).items() if v >= 0.05)
        rows.append(f"| {label(name)} | {f(r['default']['s_per_sample'])} | {f(c['s_per_sample'])} | "
                    f"{f(c['over_bf16_default'], 3)} | {f(e.get('over_bf16_default'), 3)} | "
                    f"{f(c['max_rel_error'], 3)} ({f(c['bf16_default_max_rel_error'], 3)}) | {prof} |")
    return "\n".join(rows)


def left_block(folder: Path) -> str:
    """What is left between the default path and the matmul peak: the profile's device time
    outside the matmuls, per model."""
    h = load(folder)
    rows = ["| model | default path MFU | device ms/sample | matmuls | outside the matmuls, by category (ms/sample) |",
            "|---|---|---|---|---|"]
    for name, r in h.get("inference", {}).items():
        p = r["profile_ms_per_sample"]
        total = sum(p.values())
        rest = ", ".join(f"{k} {v:.2f}" for k, v in p.items() if k != "matmul" and v >= 0.005)
        rows.append(f"| {label(name)} | {f(r['default']['mfu'], 3)} | {total:.2f} | "
                    f"{p.get('matmul', 0):.2f} ({p.get('matmul', 0) / total:.0%}) | {rest} |")
    tr = h.get("train_stage", {})
    if any("by_category_ms_per_step" in t.get("profile", {}) for t in tr.values()):
        rows += ["", "| model | train step: device ms | wall ms | tokens a step | by category (ms a step) |",
                 "|---|---|---|---|---|"]
        for name, t in tr.items():
            p = t.get("profile", {})
            if "by_category_ms_per_step" not in p:
                rows.append(f"| {label(name)} | not profiled: {str(p.get('failed'))[:120]} | | | |")
                continue
            cats = ", ".join(f"{k} {v:.1f}" for k, v in p["by_category_ms_per_step"].items() if v >= 0.5)
            rows.append(f"| {label(name)} | {p['ms_per_step']:.1f} | {p['wall_ms_per_step']:.1f} | "
                        f"{p['tokens_per_step']:,.0f} | {cats} |")
        rows += ["", "| model | a step's wall time: matmuls | other device work | the host (wall over device) "
                 "| the stage's time above its steady rate (the first steps' compiles) |", "|---|---|---|---|---|"]
        for name, t in tr.items():
            p = t.get("profile", {})
            if "by_category_ms_per_step" not in p:
                continue
            wall, dev, mm = p["wall_ms_per_step"], p["ms_per_step"], p["by_category_ms_per_step"].get("matmul", 0)
            warm = 1 - t["tokens_per_s"] / t["steady_tokens_per_s"] if t.get("steady_tokens_per_s") else None
            rows.append(f"| {label(name)} | {mm / wall:.0%} | {(dev - mm) / wall:.0%} | {max(wall - dev, 0) / wall:.0%} | "
                        + (f"{warm:.0%} |" if warm is not None else "n/a |"))
    return "\n".join(rows)


# Reference levels the distances are measured to (benchmarks' docs say why each): default-path MFU
# against the measured bf16 matmul peak, Gemma2 / Llama3 time over their FLOP ratio, FP8 time over
# the bf16 default's, and the train stage's MFU over all its steps.
LEVELS = {"mfu": 0.85, "ratio_over_flops": 1.03, "fp8_over_bf16": 0.6, "train_mfu": 0.60}


def time_over_flops(h: dict) -> float | None:
    """Gemma2 / Llama3 time per sample on the default path over their FLOP ratio (None unless both ran)."""
    t, fl = (h.get("s_per_sample_ratio_gemma2_over_llama3") or {}).get("default"), h.get("flop_ratio_gemma2_over_llama3")
    return t / fl if t and fl else None


def commands(h: dict) -> list[str]:
    """Every command that made the run's numbers, in order, once each: each part's, and before it the
    one whose models a later run of that part kept (`kept_from`)."""
    out = []
    for p in h["parts"].values():
        out += ([p["kept_from"]["command"]] if p.get("kept_from") else []) + [p["command"]]
    return list(dict.fromkeys(out))


def runs_block(folder: Path) -> str:
    """Every committed run, newest first, with the measures the docs are about side by side, and the
    spread between runs on cards of the same name: how far a number moves from one card to another."""
    rows = ["| run | card | commit | default-path MFU: Llama3 / Gemma2 | matmul ms/sample: Llama3 / Gemma2 "
            "| Gemma2 / Llama3 time over FLOPs | fp8 / bf16: Llama3 / Gemma2 | train MFU all steps: Llama3 / Gemma2 "
            "| T4 path: Gemma2 4-bit / Llama3 8-bit |", "|---|---|---|---|---|---|---|---|---|"]
    pair = ("llama3-8b", "gemma2-9b")
    spread = {}
    for h, p in runs(folder.parent):
        inf, tr = h.get("inference", {}), h.get("train_stage", {})

        def both(get, digits=3):
            vals = [get(n) for n in pair]
            return " / ".join(f(v, digits) for v in vals) if any(v is not None for v in vals) else "not run"

        mfu = lambda n: inf.get(n, {}).get("default", {}).get("mfu")  # noqa: E731
        matmul = lambda n: inf.get(n, {}).get("profile_ms_per_sample", {}).get("matmul")  # noqa: E731
        over = time_over_flops(h)
        t4 = h.get("t4_path", {}).get("ratio_gemma2_4bit_over_llama3_8bit")
        rows.append(f"| [`{p.name}`](../{where(p)}/MANIFEST.md) | {h['device']['name']} | {str(h['commit'])[:10]} | "
                    f"{both(mfu)} | {both(matmul, 2)} | {f(over, 3) if over else 'not run'} | "
                    f"{both(lambda n: inf.get(n, {}).get('fp8', {}).get('over_bf16_default'))} | "
                    f"{both(lambda n: tr.get(n, {}).get('mfu'))} | "
                    f"{f(t4, 2) if t4 else 'cells missing' if h.get('t4_path') else 'not run'} |")
        for n in pair:
            if mfu(n) is not None:
                spread.setdefault((h["device"]["name"], n), []).append((mfu(n), matmul(n)))
    out = "\n".join(rows)
    notes = []
    for (card, n), vals in spread.items():
        if len(vals) > 1:
            m = [v for v, _ in vals]
            mm = [v for _, v in vals if v is not None]
            notes.append(f"{label(n)} on {card} ({len(vals)} runs): default-path MFU {min(m):.3f} to {max(m):.3f}"
                         + (f", matmul device time {min(mm):.2f} to {max(mm):.2f} ms/sample ({max(mm) / min(mm) - 1:.1%} apart)"
                            if len(mm) > 1 else ""))
    if notes:
        out += ("\n\nBetween runs on cards of the same name: " + "; ".join(notes) + ". The runs differ in card and "
                "commit, so a difference between two of them is not by itself a code change's effect; ratios within "
                "one run compare cells measured side by side on one card.")
    return out


def distance_block(folder: Path) -> str:
    """Each measure beside its reference level (LEVELS) and what reaching it takes, per model."""
    h = load(folder)
    rows = ["| measure | model | measured | level | reached | what reaching it takes |", "|---|---|---|---|---|---|"]

    def row(what, name, value, level, below_is_good, need):
        ok = value is not None and (value <= level if below_is_good else value >= level)
        rows.append(f"| {what} | {name} | {f(value, 3)} | {level:g} | {'yes' if ok else 'no'} | "
                    f"{'' if ok or value is None else need} |")

    for name, r in h.get("inference", {}).items():
        d = r.get("default", {})
        if "mfu" in d:
            less = d["s_per_sample"] * (1 - d["mfu"] / LEVELS["mfu"]) * 1e3
            row("default-path MFU (measured peak)", label(name), d["mfu"], LEVELS["mfu"], False,
                f"{less:.2f} ms/sample less ({less / (d['s_per_sample'] * 1e3):.1%})")
    over = time_over_flops(h)
    if over:
        row("Gemma2 / Llama3 time over their FLOP ratio", "both", over, LEVELS["ratio_over_flops"], True,
            f"Gemma2's time {(over - LEVELS['ratio_over_flops']) / over:.1%} less, Llama3's as it is")
    for name, r in h.get("inference", {}).items():
        c = r.get("fp8", {})
        if "over_bf16_default" in c:
            less = (c["s_per_sample"] - LEVELS["fp8_over_bf16"] * r["default"]["s_per_sample"]) * 1e3
            row("fp8 time over the bf16 default's", label(name), c["over_bf16_default"], LEVELS["fp8_over_bf16"],
                True, f"{less:.2f} ms/sample less ({less / (c['s_per_sample'] * 1e3):.0%} of fp8's time)")
    for name, r in h.get("train_stage", {}).items():
        if "mfu" in r:
            row("train stage MFU over all steps", label(name), r["mfu"], LEVELS["train_mfu"], False,
                f"{r['tokens_per_s'] * LEVELS['train_mfu'] / r['mfu']:,.0f} tokens/s "
                f"(now {r['tokens_per_s']:,.0f}; steady second half {f(r.get('steady_mfu'), 3)} MFU)")
    return "\n".join(rows)


T4_CELLS = {"gemma2_4bit": "Gemma2-9B, NF4 4-bit", "llama3_8bit": "Llama3-8B, LLM.int8 8-bit",
            "llama3_4bit": "Llama3-8B, NF4 4-bit",
            "gemma2_4bit_sdpa_no_softcap": "Gemma2-9B, NF4 4-bit, sdpa, softcap dropped (timing only)"}


def t4_block(folder: Path, rel: str = "../") -> str:
    """The Kaggle 2xT4 software path measured on a datacenter card (benchmarks/t4_path.py), from the
    newest run beside `folder` whose four cells all ran (else `folder`'s), naming that run."""
    folder = newest_with(folder, t4_complete)
    h = load(folder)
    t = h.get("t4_path")
    if not t:
        return "The T4-path part has not run in this results folder."
    head = f"Measured on {card_line(h, folder).format(rel=rel)}.\n\n"
    rows = ["| cell | attention | batch | s/sample | weights GB | peak GB (cap) | logits finite | "
            "projected hours, 25k rows on 2xT4 |", "|---|---|---|---|---|---|---|---|"]
    proj = t.get("projection", {}).get("hours_2xT4", {})
    failed = {n["what"].removeprefix("t4_path."): n["reason"] for n in h["not_run"] if n["what"].startswith("t4_path.")}
    for cell in T4_CELLS:
        if cell in failed:
            rows.append(f"| {T4_CELLS[cell]} | failed: {failed[cell][:160]} | | | | | | |")
    for cell, c in t["cells"].items():
        if "s_per_sample" not in c:
            rows.append(f"| {T4_CELLS.get(cell, cell)} | not run: {str(c.get('skipped'))[:120]} | | | | | | |")
            continue
        hrs = proj.get(cell)
        rows.append(f"| {T4_CELLS.get(cell, cell)} | {c['attention']} | {c['batch_size']} | {f(c['s_per_sample'])} | "
                    f"{c['weights_gb']} | {c['peak_memory_gb']} ({c['memory_cap_gb']:g}) | {c['finite']} | "
                    + (f"{hrs[0]:.1f} to {hrs[1]:.1f} (projection)" if hrs else "n/a") + " |")
    out = head + "\n".join(rows)
    part = folder / "t4_path.json"  # the part file keeps which batches did not fit
    raw = json.loads(part.read_text())["models"] if part.is_file() else {}
    smaller = {T4_CELLS.get(k, k): c for k, c in raw.items() if c.get("batches_too_big") and "s_per_sample" in c}
    if smaller:
        out += ("\n\nEach cell runs the largest batch that fits the cap; smaller ones here: "
                + "; ".join(f"{k} {c['batch_size']} rows ({', '.join(map(str, c['batches_too_big']))} did not fit)"
                            for k, c in smaller.items())
                + ". The factors below compare cells at their own batches, so a model that fits fewer rows "
                  "carries the cost of smaller batches in its factor, as it would on a T4.")
    if "ratio_gemma2_4bit_over_llama3_8bit" in t:
        out += (f"\n\nGemma2-9B 4-bit over Llama3-8B 8-bit (the notebooks' pairing): "
                f"{f(t['ratio_gemma2_4bit_over_llama3_8bit'], 2)}x; over Llama3-8B 4-bit: "
                f"{f(t.get('ratio_gemma2_4bit_over_llama3_4bit'), 2)}x.")
    fa = t.get("factors")
    if fa:
        out += ("\n\n| factor | measured as | x |\n|---|---|---|\n"
                f"| eager softcap attention | Gemma2 eager / Gemma2 sdpa without softcap | "
                f"{f(fa['attention_eager_over_sdpa'], 2)} |\n"
                f"| layers, width, vocabulary (the rest of the architecture) | Gemma2 sdpa / Llama3 4-bit sdpa | "
                f"{f(fa['architecture_gemma2_sdpa_over_llama3_4bit'], 2)} (FLOP ratio {f(fa['flop_ratio'], 2)}) |\n"
                f"| quantisation kernels | Llama3 4-bit / Llama3 8-bit | {f(fa['quantisation_llama3_4bit_over_8bit'], 2)} |\n"
                f"| product: Gemma2 4-bit / Llama3 8-bit | | "
                f"{f(fa['attention_eager_over_sdpa'] * fa['architecture_gemma2_sdpa_over_llama3_4bit'] * fa['quantisation_llama3_4bit_over_8bit'], 2)} |")
        named = {"eager softcap attention": fa["attention_eager_over_sdpa"],
                 "the rest of the architecture, at each model's batch": fa["architecture_gemma2_sdpa_over_llama3_4bit"],
                 "the quantisation kernels": fa["quantisation_llama3_4bit_over_8bit"]}
        big = max(named, key=lambda k: abs(math.log(named[k])))
        a = fa["attention_eager_over_sdpa"]
        out += (f"\n\nThe largest factor is {big}: {f(named[big], 2)}x. Eager softcap attention by itself is "
                f"{abs(a - 1):.0%} {'slower' if a > 1 else 'faster'} than SDPA without the softcap at the same batch.")
    pj = t.get("projection")
    if pj:
        out += (f"\n\nProjected hours are not measurements: this card's time scaled by its memory bandwidth over a "
                f"T4's ({pj['card_memory_gb_s']:g} / {pj['t4_memory_gb_s']:g} GB/s, the lower figure) and by its "
                f"fp16 tensor peak over a T4's ({pj['card_fp16_tflops']:g} / {pj['t4_fp16_tflops']:g} TFLOP/s, the "
                f"higher), for {pj['kaggle_rows']:,} rows on {pj['gpus']} GPUs, without swap TTA.")
    return out


def newer_block(folder: Path) -> str:
    """Runs newer than `folder` (the one the page renders from) that do not compare both models:
    each with its card and commands, and what it measured, in the tables above' form."""
    main = load(folder)
    newer = [(h, p) for h, p in runs(folder.parent) if h["date"] > main["date"]]
    if not newer:
        return "No newer run."
    t4_shown = newest_with(folder, t4_complete)
    out = []
    for h, p in newer:
        parts = ", ".join(f"`{name}`" for name in h["parts"])
        differs = [what for what, key in (("card", lambda x: x["device"]["name"]), ("code", lambda x: x.get("code_digest")))
                   if key(h) != key(main)]
        out.append(f"### {h['device']['name']}, {h['date'][:10]}, commit {str(h['commit'])[:10]}\n\n"
                   f"{card_line(h, p).format(rel='../')}; parts {parts}; bf16 matmul peak "
                   f"{tflops(h['peak_bf16_flops_measured'])} TFLOP/s measured. Its ratios compare cells of this "
                   f"run only" + (f"; beside the run above, its {' and '.join(differs)} differ." if differs else "."))
        if h.get("inference"):
            out += [inference_block(p), fp8_block(p)]
        if h.get("train_stage"):
            out.append(stages_block(p))
        out.append(distance_block(p))
        if h.get("t4_path") and p != t4_shown:
            out.append(t4_block(p))
    return "\n\n".join(out)


def not_run_block(folder: Path) -> str:
    h = load(folder)
    unfinished = [p for p, v in h["parts"].items() if v.get("seconds") is None]
    absent = [p for p in ("inference", "evaluate", "train", "t4_path") if p not in h["parts"]]
    lines = [f"- `{n['what']}`: {n['reason'][:300]}" for n in h["not_run"]]
    lines += [f"- the `{p}` part stopped before it finished (its file has no `seconds`): the models it had not "
              f"recorded have no `{p}` results here" for p in unfinished]
    lines += [f"- the `{p}` part did not run into this folder" for p in absent]
    if not lines:
        return "Every cell of the run ran."
    return "Not run in this results folder:\n\n" + "\n".join(lines)


FULL_SIZE = ("llama3-8b", "gemma2-9b", "qwen2-7b", "mistral-7b")  # the shipped configs the families table shows


def families_block(root: Path) -> str:
    """docs/gpu.md: per family, its params entry and shipped full-size config (models/<folder>) and
    what prefbench.families looks up for it; the parameter count is the 3-class classifier built
    from that config on the meta device (shapes only), as the stages count it."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from benchmarks.settings import family_key
    from prefbench.families import family_of
    from prefbench.flops import head_dim, layer_windows
    from prefbench.models import count_parameters, label_config_kwargs

    cols = {}
    for name in FULL_SIZE:
        config = AutoConfig.from_pretrained(root / "models" / name, **label_config_kwargs())
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(config)
        fam, windows = family_of(config), [w for w in layer_windows(config) if w]
        bias = model.get_decoder().layers[0].self_attn.q_proj.bias is not None
        cols[name] = {
            "params entry": f"`models.{family_key(name)}`", "model_type": f"`{config.model_type}`",
            "layers": config.num_hidden_layers, "hidden size": config.hidden_size,
            "attention heads / KV heads": f"{config.num_attention_heads} / {config.num_key_value_heads}",
            "head dim": head_dim(config), "MLP width": config.intermediate_size, "vocabulary": config.vocab_size,
            "q/k/v bias": "yes" if bias else "no", "tied embeddings": "yes" if config.tie_word_embeddings else "no",
            "sliding window": (f"{', '.join(map(str, sorted(set(windows))))} on {len(windows)} of "
                               f"{config.num_hidden_layers} layers" if windows else "none"),
            "attention logit softcap": getattr(config, "attn_logit_softcapping", None) or "none",
            "parameters (3-class classifier)": f"{count_parameters(model)['params_total']:,}",
            "`auto` attention without flash-attn-4": fam.attention,
            "Liger kernels": f"`{fam.liger}` ({fam.liger_mlp})" if fam.liger else "none",
            "pad token": "its own" if fam.pad == "own" else "none: EOS",
        }
        del model
    rows = ["| | " + " | ".join(label(n) for n in FULL_SIZE) + " |", "|---|" + "---|" * len(FULL_SIZE)]
    for what in cols[FULL_SIZE[0]]:
        rows.append(f"| {what} | " + " | ".join(str(cols[n][what]) for n in FULL_SIZE) + " |")
    return "\n".join(rows) + ("\n\nFrom `models/<folder>/config.json` (`python -m scripts.make_models`) and "
                              "`prefbench/families.py`.")


def gpu_blocks(folder: Path) -> dict:
    """name -> generator(root) for the GPU blocks, all from `folder`."""
    return {"headline": lambda root: headline_block(folder),
            "perf-setup": lambda root: setup_block(folder),
            "perf-architecture": lambda root: architecture_block(folder),
            "perf-inference": lambda root: inference_block(folder),
            "perf-profile": lambda root: profile_block(folder),
            "perf-stages": lambda root: stages_block(folder),
            "perf-fp8": lambda root: fp8_block(folder),
            "perf-left": lambda root: left_block(folder),
            "perf-distance": lambda root: distance_block(folder),
            "perf-t4": lambda root: t4_block(folder),
            "perf-newer": lambda root: newer_block(folder),
            "perf-runs": lambda root: runs_block(folder),
            "perf-not-run": lambda root: not_run_block(folder)}


def all_blocks(folder: Path) -> dict:
    from benchmarks.cpu_report import BLOCKS as cpu

    return {**cpu, **gpu_blocks(folder), "model-families": families_block}


def main(results: Path | None, check: bool) -> int:
    folder = results or newest_results()
    blocks = all_blocks(folder)
    stale = []
    print(f"results: {where(folder)}")
    for path in documents(ROOT):
        text = path.read_text()
        if not blocks_in(text):
            continue
        try:
            new = render(text, blocks, ROOT, str(path.relative_to(ROOT)))
        except UnknownBlockError as e:
            raise SystemExit(str(e))
        if new != text:
            stale.append(path.relative_to(ROOT).as_posix())
            if not check:
                path.write_text(new)
    verb = "differ from their rendering" if check else "rendered anew"
    print(f"{', '.join(stale)}: {verb}" if stale else "docs up to date")
    return 1 if check and stale else 0
