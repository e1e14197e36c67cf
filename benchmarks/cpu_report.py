"""The CPU numbers the docs quote, as generated blocks (benchmarks/docgen.py).

Each generator is a function of the repo's root that reads committed files only (FILES says which):

    default-run        both models' committed default run and their seed-to-seed spread
    noise-floor        the spread per model, with the 2 sd the pull-request comment holds changes to
    cpu-repro          the default training under other CPU kernels and dtypes
    tfidf              the scikit-learn baseline's committed runs
    pr-review-example  docs/pr-review-example.md (made by scripts/pr_example.sh), quoted

`python -m benchmarks report` renders them with the GPU blocks (benchmarks/report.py) into
README.md and docs/*.md; `render_file` renders these alone, leaving every other block as it is.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Callable

from benchmarks.docgen import BLOCK, render

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "metrics/reference.json"
NOISE = "metrics/noise.json"
CPU_REPRO = "benchmarks/results/cpu-repro.jsonl"
TFIDF = ("benchmarks/results/tfidf-arena-sample.json", "benchmarks/results/tfidf-generated.json")
PR_EXAMPLE = "docs/pr-review-example.md"
NATIVE_ENV = "OMP_NUM_THREADS=1"  # cpu_repro.sh's runs on this CPU's own kernels (one thread)
MODELS = ("llama3", "gemma2")


def load(root: Path, rel: str):
    return json.loads((root / rel).read_text())


def lines_of(root: Path, rel: str) -> list[dict]:
    return [json.loads(line) for line in (root / rel).read_text().splitlines() if line.strip()]


def short(commit: str) -> str:
    return commit[:7]


def mean_sd(stat: dict) -> str:
    return f"{stat['mean']:.4f} ± {stat['sd']:.4f}"


def default_run(root: Path) -> str:
    ref, noise = load(root, REFERENCE), load(root, NOISE)
    rows = ["| model | log-loss | accuracy | label prior (log-loss) | seeds: log-loss mean ± sd "
            "| accuracy mean ± sd | n |", "|---|---|---|---|---|---|---|"]
    for model in MODELS:
        r, n = ref["models"][model], noise["models"][model]
        rows.append(f"| {model} | {r['log_loss']:.4f} | {r['accuracy']:.4f} | {r['log_loss_prior']:.4f} "
                    f"| {mean_sd(n['log_loss'])} | {mean_sd(n['accuracy'])} | {n['n']} |")
    samples = sorted({ref["models"][m]["n_samples"] for m in MODELS})
    dtypes = sorted({ref["models"][m]["dtype"] for m in MODELS})
    return "\n".join(rows) + (
        f"\n\nValidation split of the generated default data ({' / '.join(map(str, samples))} rows), "
        f"{' / '.join(dtypes)} on {ref['cpu']} ({ref['cpu_capability']}), torch {ref['torch']} "
        f"(`{REFERENCE}`); the seed columns are each model's runs that differ only in their seeds "
        f"(`{NOISE}`).\n")


def seeds_in_words(seeds: list[dict]) -> str:
    """`train.seed 0-4 at data.seed 42; data.seed 0-4 at train.seed 0` for the usual two sweeps."""
    pairs = [(s["train.seed"], s["data.seed"]) for s in seeds]
    t0 = Counter(t for t, _ in pairs).most_common(1)[0][0]
    d0 = Counter(d for _, d in pairs).most_common(1)[0][0]
    trains = sorted(t for t, d in pairs if d == d0)
    datas = sorted(d for t, d in pairs if t == t0 and d != d0)
    rest = sorted(p for p in pairs if p[1] != d0 and p[0] != t0)
    words = [f"train.seed {', '.join(map(str, trains))} at data.seed {d0}"]
    if datas:
        words.append(f"data.seed {', '.join(map(str, datas))} at train.seed {t0}")
    words += [f"train.seed {t} with data.seed {d}" for t, d in rest]
    return "; ".join(words)


def noise_floor(root: Path) -> str:
    noise = load(root, NOISE)
    rows = ["| model | log-loss mean ± sd | 2 sd | accuracy mean ± sd | 2 sd | n | seeds | device |",
            "|---|---|---|---|---|---|---|---|"]
    for model in MODELS:
        n = noise["models"][model]
        rows.append(f"| {model} | {mean_sd(n['log_loss'])} | {2 * n['log_loss']['sd']:.4f} "
                    f"| {mean_sd(n['accuracy'])} | {2 * n['accuracy']['sd']:.4f} | {n['n']} "
                    f"| {seeds_in_words(n['seeds'])} | {', '.join(n['devices'])} |")
    return "\n".join(rows) + f"\n\n`{NOISE}`, made by: `{noise['command']}`\n"


def cpu_repro(root: Path) -> str:
    records = lines_of(root, CPU_REPRO)
    runs = [r for r in records if "run" in r]
    probes = {p["probe"]: p for p in records if "probe" in p}
    tolerance = load(root, REFERENCE)["tolerance"]
    machines = sorted({f"{r['cpu']} ({r['native_capability']}), torch {r['torch']}" for r in runs})
    native = {(r["model"], r["dtype"]): r for r in runs if r["env"] == NATIVE_ENV}
    rows = ["| run | model | dtype | environment | log-loss | accuracy | against this CPU's kernels |",
            "|---|---|---|---|---|---|---|"]
    for r in runs:
        base = native.get((r["model"], r["dtype"]))
        if base is None:
            against = "(no run on this CPU's kernels to compare)"
        elif r is base:
            against = "(this CPU's kernels)"
        elif (r["log_loss"], r["accuracy"]) == (base["log_loss"], base["accuracy"]):
            against = "equal to 6 decimals"
        else:
            against = f"log-loss {r['log_loss'] - base['log_loss']:+.6f}"
        rows.append(f"| `{r['run']}` | {r['model']} | {r['dtype']} | `{r['env']}` | {r['log_loss']:.6f} "
                    f"| {r['accuracy']:.6f} | {against} |")
    text = [f"On {'; '.join(machines)}: `{CPU_REPRO}` (`bash benchmarks/cpu_repro.sh`):", "",
            *rows, ""]
    for model in MODELS:
        f64, f32 = native.get((model, "float64")), native.get((model, "float32"))
        if f64 and f32:
            gap = abs(f64["log_loss"] - f32["log_loss"])
            text.append(f"{model} in float32 against float64: log-loss {gap:.4f} apart, "
                        f"{gap / tolerance:.1f} times the cross-CPU tolerance ({tolerance}, `{REFERENCE}`).")
    if "native" in probes:
        ref = probes["native"]["float32"]
        differ = [f"`{p['env']}`: {sum(a != b for a, b in zip(p['float32'], ref))} of {len(ref)}"
                  for name, p in probes.items() if name != "native"]
        text.append(f"The probe lines (one float32 computation, {len(ref)} values, hex) show the other "
                    f"settings do round differently; values that differ from this CPU's kernels: "
                    f"{'; '.join(differ)}.")
    return "\n".join(text) + "\n"


def data_label(run: dict) -> str:
    rows = run["metrics/data.json"]["rows_read"]
    return f"{'real sample' if 'arena_train_sample' in run['command'] else 'generated default'}, {rows:,} rows"


def tfidf(root: Path) -> str:
    rows = ["| model | log_loss | log_loss_prior | accuracy | seconds_per_sample | params_total "
            "| data (committed result) |", "|---|---|---|---|---|---|---|"]
    runs = {Path(rel).name: load(root, rel) for rel in TFIDF}
    for name, run in runs.items():
        ev = run["metrics/eval.json"]
        rows.append(f"| tfidf (scikit-learn) | {ev['log_loss']:.4f} | {ev['log_loss_prior']:.4f} "
                    f"| {ev['accuracy']:.3f} | {ev['seconds_per_sample']:.2e} | {ev['params_total']:,} "
                    f"| {data_label(run)} (`{name}`) |")
    where = sorted({f"commit {short(run['commit'])} on {run['machine']}" for run in runs.values()})
    commands = "; ".join(f"`{run['command']}` (`{name}`)" for name, run in runs.items())
    return "\n".join(rows) + (f"\n\nMade by `python -m benchmarks.tfidf_baseline` at {' and '.join(where)}, "
                              f"each run in a fresh clone: {commands}; files in `benchmarks/results/`.\n")



def pr_review_example(root: Path) -> str:
    example = (root / PR_EXAMPLE).read_text().strip().splitlines()
    return "\n".join(f"> {line}".rstrip() for line in example if not line.startswith("<!--")) + "\n"


BLOCKS: dict[str, Callable[[Path], str]] = {
    "default-run": default_run,
    "noise-floor": noise_floor,
    "cpu-repro": cpu_repro,
    "tfidf": tfidf,
    "pr-review-example": pr_review_example,
}
FILES: dict[str, tuple[str, ...]] = {  # what each block reads
    "default-run": (REFERENCE, NOISE),
    "noise-floor": (NOISE,),
    "cpu-repro": (CPU_REPRO, REFERENCE),
    "tfidf": TFIDF,
    "pr-review-example": (PR_EXAMPLE,),
}


def render_file(path: Path, root: Path = ROOT) -> str:
    """`path`'s text with its CPU blocks rendered from `root`'s files; every other block (the GPU
    ones, `python -m benchmarks report`'s) left exactly as it is, an empty one included."""
    def fill(m) -> str:
        return render(m.group(0), BLOCKS, root, where=str(path)) if m.group("name") in BLOCKS else m.group(0)
    return BLOCK.sub(fill, path.read_text())
