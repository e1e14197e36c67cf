"""Run the benchmark's parts into one results folder and merge them into headline.json.

A results folder holds, per part (inference, evaluate, train, t4_path), `<part>.json` (its meta: command,
date, card, versions, code; and its results, written after every model so a run cut short keeps
what it measured) and `<part>.log` (everything it printed, the stage processes' output included);
then `headline.json`, merged from whatever parts are there, and `MANIFEST.md`. A part run again
replaces its own file only, so parts can run separately (`--only`) into the same folder. Nothing is
skipped quietly: a cell that could not run is in headline.json's `not_run` with its reason.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from benchmarks import card

PARTS = ("inference", "evaluate", "train", "t4_path")


class Log:
    """Prints and appends to the part's log file, each line flushed (a killed run keeps its log)."""

    def __init__(self, path: Path):
        self.file = path.open("a", buffering=1)
        self.start = time.perf_counter()

    def __call__(self, text: str, prefix: str = "") -> None:
        line = f"[{time.perf_counter() - self.start:7.1f}s] {prefix}{text}"
        print(line, flush=True)
        self.file.write(line + "\n")

    def close(self) -> None:
        self.file.close()


def meta(dev, peak: float, argv: list[str]) -> dict:
    info = card.describe(dev)
    return {"command": "python -m benchmarks " + shlex.join(argv), "date": card.now(), **card.code_state(),
            "device": info, "versions": card.versions(), "peak_bf16_flops_measured": peak,
            "peak_bf16_flops_datasheet": card.datasheet_peak(info["name"])}


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)  # whole or absent


def run(out: Path, parts: list[str], models: list[str], rows: int, reps: int, steps: int, argv: list[str],
        stage_models: list[str] | None = None, t4_rows: int | None = None) -> dict:
    """Run `parts` in order into `out`, then merge the folder; returns headline.json's content.
    Inference runs `models`; the evaluate and train parts run the stages for `stage_models`
    (default: `models`); the t4_path part runs its own cells (benchmarks.t4_path) on `t4_rows`
    rows (default: `rows`)."""
    stage_models = stage_models or models
    t4_rows = t4_rows or rows
    from benchmarks import inference, pipeline, t4_path  # torch & transformers: not needed by `report`

    out.mkdir(parents=True, exist_ok=True)
    dev = card.device()
    peak = card.measure_peak(dev)
    for part in parts:
        log = Log(out / f"{part}.log")
        doc = {"part": part, "meta": meta(dev, peak, argv),
               "settings": {"rows": t4_rows if part == "t4_path" else rows, "reps": reps, "steps": steps},
               "models": {}}
        running = models if part == "inference" else stage_models if part in ("evaluate", "train") else None
        kept = kept_models(out / f"{part}.json", doc, running)
        if kept:
            doc["models"] = kept["models"]
            doc["kept_from"] = {k: v for k, v in kept.items() if k != "models"} | {"models": list(kept["models"])}
        sheet = doc["meta"]["peak_bf16_flops_datasheet"]
        log(f"{part} on {doc['meta']['device']['name']}: bf16 matmul peak {peak / 1e12:.1f} TFLOP/s measured"
            + (f", datasheet {sheet / 1e12:.0f}" if sheet else ""))

        def record(name: str, result: dict) -> None:
            doc["models"][name] = result
            write_json(out / f"{part}.json", doc)

        if part == "inference":
            inference.run(models, rows, reps, dev, peak, sheet, record, log, fp8_models=stage_models)
        elif part == "t4_path":
            t4_path.run(t4_rows, reps, dev, record, log)
            doc["summary"] = t4_path.summarise(doc["models"], doc["meta"]["device"]["name"])
        for name in stage_models if part in ("evaluate", "train") else ():
            try:
                if part == "evaluate":
                    result = pipeline.evaluate_stage(name, rows, dev, log)
                else:
                    result = pipeline.train_stage(name, steps, dev, peak, sheet, log)
                    if "failed" not in result:
                        result["profile"] = train_profile_or_failure(name, dev, log)
            except Exception as e:  # noqa: BLE001  recorded; the next model still runs
                result = {"failed": f"{type(e).__name__}: {str(e)[:600]}"}
            if "failed" in result:
                log(f"{name} {part}: failed: {result['failed'][-400:]}")
            else:
                log(f"{name} {part}: " + ", ".join(f"{k} {v:.4g}" for k, v in result.items()
                                                   if isinstance(v, float) and v is not None))
            record(name, result)
        doc["seconds"] = round(time.perf_counter() - log.start, 1)
        write_json(out / f"{part}.json", doc)
        log(f"{part} done in {doc['seconds']:.0f} s")
        log.close()
    return merge(out)


def kept_models(path: Path, doc: dict, running: list[str] | None) -> dict | None:
    """The models of an earlier run of this part in `path` that this run keeps: those it does not
    run again, when that run finished on the same card, code and settings (so one folder can be
    filled by several commands, e.g. `--stage-models gemma2-9b` after `--stage-models llama3-8b`).
    None when there is nothing to keep."""
    if running is None or not path.exists():
        return None
    old = json.loads(path.read_text())
    same = (old.get("seconds") is not None and old.get("settings") == doc["settings"]
            and old["meta"]["code_digest"] == doc["meta"]["code_digest"]
            and old["meta"]["device"].get("name") == doc["meta"]["device"].get("name"))
    models = {k: v for k, v in old.get("models", {}).items() if k not in running and "failed" not in v}
    if not (same and models):
        return None
    return {"command": old["meta"]["command"], "date": old["meta"]["date"], "models": models}


def train_profile_or_failure(name: str, dev, log) -> dict:
    from benchmarks.train_profile import profile_train
    try:
        return profile_train(name, dev, log)
    except Exception as e:  # noqa: BLE001  the stage's numbers stand without it; the failure is kept
        log(f"{name} train profile failed: {type(e).__name__}: {str(e)[:400]}")
        return {"failed": f"{type(e).__name__}: {str(e)[:600]}"}


def pick(d: dict, *keys: str) -> dict:
    return {k: d.get(k) for k in keys}


def cell_summary(c: dict) -> dict:
    """An inference cell as headline.json keeps it: speed, MFU, the path, and its logit check."""
    return pick(c, "s_per_sample", "mfu", "mfu_datasheet", "attn", "kernels", "packed", "dtype", "tokens_per_s",
                "padding_share", "peak_memory_gb", "rows", "tokens", "max_length") | {
        "max_rel_error": c["check"]["max_rel_error"], "plain_eager_max_rel_error": c["check"]["plain_eager_max_rel_error"],
        "checked": c["check"]["within_tolerance"]}


def by_family(models: dict, family: str) -> str | None:
    return next((name for name, m in models.items() if m.get("family") == family), None)


def merge(out: Path) -> dict:
    """headline.json and MANIFEST.md from the part files in `out`."""
    docs = {p: json.loads((out / f"{p}.json").read_text()) for p in PARTS if (out / f"{p}.json").exists()}
    if not docs:
        raise SystemExit(f"{out}: no part results ({', '.join(p + '.json' for p in PARTS)}) to merge")
    first = docs.get("inference") or next(iter(docs.values()))
    m = first["meta"]
    head = {"commit": m["commit"], "code_digest": m["code_digest"], "date": m["date"], "device": m["device"],
            "versions": m["versions"], "peak_bf16_flops_measured": m["peak_bf16_flops_measured"],
            "peak_bf16_flops_datasheet": m["peak_bf16_flops_datasheet"],
            "parts": {p: pick(d["meta"], "command", "date", "commit", "code_digest") | {"settings": d["settings"],
                                                                                         "seconds": d.get("seconds")}
                      | ({"kept_from": d["kept_from"]} if d.get("kept_from") else {})
                      for p, d in docs.items()},
            "not_run": []}
    devices = {d["meta"]["device"]["name"] for d in docs.values()}
    codes = {d["meta"]["code_digest"] for d in docs.values()}
    if len(devices) > 1 or len(codes) > 1:
        head["not_run"].append({"what": "merge", "reason": f"parts from different cards {sorted(devices)} or code "
                                f"{sorted(codes)}: compare them with care"})

    def failed(part: str, name: str, result: dict) -> bool:
        if "failed" in result:
            head["not_run"].append({"what": f"{part}.{name}", "reason": result["failed"]})
            return True
        return False

    inf = docs.get("inference", {}).get("models", {})
    if inf:
        head["inference"] = {}
        for name, r in inf.items():
            if failed("inference", name, r):
                continue
            cells = {k: cell_summary(r[k]) for k in ("default", "padded")}
            for label in ("fp8", "fp8_eager"):
                c = r.get(label) or {"skipped": "not measured (results from before the fp8 cells)"}
                if "s_per_sample" in c:  # FP8's error is reported beside bf16's, not bounded by it
                    cells[label] = cell_summary(c) | {"checked": None, **pick(c, "over_bf16_default",
                                                                             "bf16_default_max_rel_error")}
                    if "profile" in c:
                        cells[label]["profile_ms_per_sample"] = c["profile"]["by_category_ms_per_sample"]
                else:
                    failed("inference", f"{name}.{label}", c)
                    cells[label] = {"skipped": c.get("skipped") or c.get("failed")}
            head["inference"][name] = {**cells, "flops_forward": r["flops_forward"], "family": r["family"],
                                       "params_total": r["params_total"], "layers": r["layers"],
                                       "profile_ms_per_sample": r["profile"]["by_category_ms_per_sample"]}
        g, l = by_family(head["inference"], "gemma2"), by_family(head["inference"], "llama")
        if g and l:
            G, L = head["inference"][g], head["inference"][l]
            head["flop_ratio_gemma2_over_llama3"] = G["flops_forward"] / L["flops_forward"]
            head["s_per_sample_ratio_gemma2_over_llama3"] = {k: G[k]["s_per_sample"] / L[k]["s_per_sample"]
                                                             for k in ("default", "padded")}
    ev = docs.get("evaluate", {}).get("models", {})
    if ev:
        head["evaluate_stage"] = {}
        same_rows = docs["evaluate"]["settings"]["rows"] == docs.get("inference", {}).get("settings", {}).get("rows")
        for name, r in ev.items():
            if failed("evaluate", name, r):
                continue
            bench = head.get("inference", {}).get(name, {}).get("default")
            head["evaluate_stage"][name] = {
                "s_per_sample": r["s_per_sample"], "rows": r["rows"],
                "over_benchmark": r["s_per_sample"] / bench["s_per_sample"] if bench and same_rows else None,
                **pick(r["eval"], "attn_implementation", "kernels", "packed", "dtype", "seconds_per_sample_passes",
                       "threads")}
    tr = docs.get("train", {}).get("models", {})
    if tr:
        head["train_stage"] = {}
        for name, r in tr.items():
            if failed("train", name, r):
                continue
            head["train_stage"][name] = pick(r, "tokens_per_s", "steady_tokens_per_s", "mfu", "mfu_datasheet",
                                             "steady_mfu", "steady_mfu_datasheet", "steps", "token_budget",
                                             "gradient_checkpointing", "max_length", "tokens_match")
            prof = r.get("profile") or {"failed": "not profiled (results from before the train profile)"}
            head["train_stage"][name]["profile"] = (
                {"failed": prof["failed"]} if "failed" in prof else
                pick(prof, "steps", "tokens_per_step", "ms_per_step", "wall_ms_per_step", "by_category_ms_per_step"))
    t4 = docs.get("t4_path")
    if t4:
        head["t4_path"] = {"cells": {}, **t4.get("summary", {})}
        for cell, r in t4["models"].items():
            if failed("t4_path", cell, r):
                continue
            head["t4_path"]["cells"][cell] = r if "skipped" in r else pick(
                r, "model", "family", "quantization", "attention", "softcap", "dtype", "kernels", "layout", "batch_size",
                "rows", "tokens", "max_length", "s_per_sample", "weights_gb", "peak_memory_gb", "memory_cap_gb",
                "finite", "padding_share")
    write_json(out / "headline.json", head)
    (out / "MANIFEST.md").write_text(manifest(head, docs))
    return head


def manifest(head: dict, docs: dict) -> str:
    d = head["device"]
    v = ", ".join(f"{k} {val}" for k, val in head["versions"].items() if val)
    lines = ["# Benchmark results", "",
             f"- Card: {d['count']} x {d['name']} (compute capability {d.get('capability')}, "
             f"{d.get('memory_gb')} GiB), driver {d.get('driver')}",
             f"- Versions: {v}",
             f"- bf16 matmul peak measured: {head['peak_bf16_flops_measured'] / 1e12:.1f} TFLOP/s; datasheet: "
             + (f"{head['peak_bf16_flops_datasheet'] / 1e12:.0f} TFLOP/s" if head["peak_bf16_flops_datasheet"] else "n/a"),
             "", "| part | command | date | commit | code digest | seconds |", "|---|---|---|---|---|---|"]
    for part, p in head["parts"].items():
        lines.append(f"| {part} | `{p['command']}` | {p['date']} | {p['commit']} | {p['code_digest']} | {p['seconds']} |")
        if p.get("kept_from"):
            k = p["kept_from"]
            lines.append(f"| {part} (kept: {', '.join(k['models'])}) | `{k['command']}` | {k['date']} | same | same | |")
    lines += ["", "Files: `headline.json` (merged by the command from the part files), `<part>.json` (every "
              "cell), `<part>.log` (the raw log, stage output included).", ""]
    if head["not_run"]:
        lines += ["Not run:", ""] + [f"- {n['what']}: {n['reason'][:300]}" for n in head["not_run"]] + [""]
    return "\n".join(lines)
