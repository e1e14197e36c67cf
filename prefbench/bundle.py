"""A folder to upload as a Kaggle dataset: everything the offline scoring notebook needs to predict.

Usage: python -m prefbench.bundle --out DIR [--params params.yaml] [--adapter models/adapter]
                                  [--pretrained PATH_ON_KAGGLE | --copy-base]
       python -m prefbench.bundle --out DIR --blend metrics/blend.json [--pretrained NAME=PATH ... | --copy-base]
       python -m prefbench.bundle --out DIR --member NAME=PARAMS,ADAPTER --member ... [--weights W,W,...]

DIR holds:
  adapter/          the trained adapter and score head (for `tfidf`: the fitted featuriser and classifier)
  base/             with --copy-base: the local `pretrained` folder (tiny models, tests)
  params.yaml       the resolved params: only the selected model, `pretrained` as it will be on Kaggle
  wheels/           prefbench itself as a wheel, and a wheel of every package predict needs that
                    Kaggle's image lacks (`pip download`, the versions installed here)
  requirements.txt  those packages, pinned: exactly what the wheels add to Kaggle's image
  predict.py        the entry: one `python -m stages.predict` per GPU (rows dealt by length as the
                    predict stage deals them), one submission.csv, the projected hours
  README.md         the commands, in the notebook's order

A blend (--blend: prefbench.blend's metrics/blend.json, each member's params.yaml and
models/adapter read at its commit through DVC's API; or --member, local files) puts each member in
members/<name>/ in the layout above (adapter/, base/, params.yaml) and the weights in blend.json,
beside one wheels/, requirements.txt and predict.py: predict.py runs every member and writes their
probabilities mixed with the weights, and projects the hours of the whole blend. Members of weight
0 are left out.

Kaggle's scoring notebook has no internet: attach DIR (and, for an LLM, the base weights as a
Kaggle model) and run the commands in DIR/README.md: one `pip install --no-index --find-links`,
then predict.py. The prefbench wheel requires only what predict imports (no DVC: only the
pipeline needs it). The wheels are for this machine's platform and Python unless --platform and
--python-version say Kaggle's (e.g. manylinux2014_x86_64 and 3.11). Nothing here pickles: adapters are safetensors,
the tfidf model safetensors and JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement

from prefbench.config import TfidfParams, load_params

ROOT = Path(__file__).resolve().parents[1]  # the source checkout the wheel is built from
# What `python -m stages.predict` imports, directly or through the libraries (prefbench's own
# dependencies minus dvc/dvclive, which only the pipeline needs), for either kind of model.
RUNTIME = ("torch", "transformers", "safetensors", "numpy", "pandas", "pyarrow", "pyyaml", "pydantic", "tqdm")
RUNTIME_LLM = ("peft", "accelerate")
RUNTIME_TFIDF = ("scikit-learn", "scipy")
# What Kaggle's notebook image has: these and everything they require.
KAGGLE_HAS = ("torch", "numpy", "pandas", "transformers")
LLM, TFIDF = "llm", "tfidf"  # the kinds of model a bundle may hold
BLEND_FILE, MEMBERS = "blend.json", "members"  # a blend's bundle: its weights and its members' folders
ENTRY = '''"""Kaggle entry point of a prefbench bundle: see README.md beside this file."""
from pathlib import Path

from prefbench.kaggle_predict import main

main(bundle=Path(__file__).resolve().parent)
'''


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def closure(names) -> set[str]:
    """`names` and every package they require (as installed here, markers evaluated), normalised."""
    seen, todo = set(), [_norm(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"error: {name} is not installed here: predict needs it (make install)") from None
        seen.add(name)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(_norm(req.name))
    return seen


def runtime(kinds: frozenset[str]) -> tuple[str, ...]:
    """What predict imports for the kinds of model in a bundle ("llm", "tfidf"; a blend may hold both)."""
    return RUNTIME + (RUNTIME_LLM if LLM in kinds else ()) + (RUNTIME_TFIDF if TFIDF in kinds else ())


def missing(kinds: frozenset[str]) -> dict[str, str]:
    """name -> version (installed here, local label dropped) of every package predict needs that
    Kaggle's image (KAGGLE_HAS and their requirements) lacks."""
    # The public version: a local label (+cpu, +cu128) names a build, not an API.
    return {name: metadata.version(name).split("+")[0]
            for name in sorted(closure(runtime(kinds)) - closure(KAGGLE_HAS))}


def requirements(kinds: frozenset[str]) -> str:
    lines = [f"{name}=={version}" for name, version in missing(kinds).items()]
    return (f"# What predict needs beyond Kaggle's image ({', '.join(KAGGLE_HAS)} and their requirements);\n"
            "# wheels/ holds them: pip install --no-index --find-links wheels prefbench\n" + "\n".join(lines) + "\n")


def download_wheels(dest: Path, kinds: frozenset[str], find_links: str | None, platform: str | None,
                    python_version: str | None) -> None:
    """The wheels of `missing` into `dest` (pip download: the configured index, or only `find_links`)."""
    pins = [f"{name}=={version}" for name, version in missing(kinds).items()]
    if not pins:
        return
    where = ["--no-index", "--find-links", find_links] if find_links else []
    target = [*(["--platform", platform] if platform else []),
              *(["--python-version", python_version] if python_version else [])]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(dest),
           *where, *target, *pins]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: pip download of {' '.join(pins)} failed (--no-wheels skips it):\n"
                         f"{proc.stderr.strip()[-3000:]}")


def build_wheel(dest: Path, kinds: frozenset[str]) -> Path:
    """prefbench as a wheel in `dest`, built from a copy of the sources (setuptools writes build/
    and *.egg-info beside what it builds; the checkout stays clean), requiring only what predict
    imports for this kind of model: no DVC. No network: the venv's setuptools builds it
    (--no-build-isolation)."""
    if not (ROOT / "pyproject.toml").is_file():
        raise SystemExit(f"error: no pyproject.toml in {ROOT}: run prefbench.bundle from a prefbench checkout")
    pins = missing(kinds)
    deps = [f"{_norm(n)}=={pins[_norm(n)]}" if _norm(n) in pins else _norm(n) for n in runtime(kinds)]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        pyproject = (ROOT / "pyproject.toml").read_text()
        pyproject, n = re.subn(r"(?ms)^dependencies = \[.*?^\]", "dependencies = " + json.dumps(deps), pyproject)
        if n != 1:
            raise SystemExit(f"error: {ROOT / 'pyproject.toml'}: no `dependencies = [...]` list to replace")
        (src / "pyproject.toml").write_text(pyproject)
        for package in ("prefbench", "stages"):
            shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                               "--no-index", "-q", "-w", str(dest), str(src)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"error: pip wheel failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    wheels = sorted(dest.glob("prefbench-*.whl"))
    if not wheels:
        raise SystemExit(f"error: pip wheel wrote no prefbench wheel into {dest}")
    return wheels[-1]


def resolved_params(params_path: Path, pretrained: str | None) -> dict:
    """params.yaml with only the selected model; `pretrained` replaced when given; predict.devices 1
    (predict.py runs one process per GPU, each with one)."""
    params = load_params(params_path)  # validates: a broken params.yaml fails here, not on Kaggle
    raw = yaml.safe_load(params_path.read_text())
    entry = dict(raw["models"][params.model])
    if pretrained is not None and not isinstance(params.selected, TfidfParams):
        entry["pretrained"] = pretrained
    raw["models"] = {params.model: entry}
    raw["predict"]["devices"] = 1
    return raw


def place_model(dest: Path, params_path: Path, adapter: Path, pretrained: str | None, copy_base: bool,
                base_root: Path = Path(".")) -> tuple[str, bool, dict]:
    """One model in `dest`, the single-model layout: adapter/, base/ (with copy_base) and the
    resolved params.yaml. Its model name, whether it is an LLM, and the resolved params.
    `base_root`: what a relative `pretrained` is relative to (the repo)."""
    params = load_params(params_path)
    if not (adapter / "resolved_params.json").is_file():
        raise SystemExit(f"error: {adapter} holds no trained model (resolved_params.json): run `dvc repro` first")
    dest.mkdir(parents=True, exist_ok=True)
    if (dest / "adapter").exists():
        shutil.rmtree(dest / "adapter")
    shutil.copytree(adapter, dest / "adapter")
    is_llm = not isinstance(params.selected, TfidfParams)
    if copy_base and is_llm:
        base = base_root / params.selected.pretrained
        if not base.is_dir():
            raise SystemExit(f"error: --copy-base: models.{params.model}.pretrained {base} is not a local folder")
        if (dest / "base").exists():
            shutil.rmtree(dest / "base")
        shutil.copytree(base, dest / "base")
        pretrained = "base"  # relative to the bundle: predict.py resolves it
    raw = resolved_params(params_path, pretrained)
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return params.model, is_llm, raw


def _remove(out: Path, *names: str) -> None:
    """What a bundle of the other layout left in `out` (predict.py takes a blend.json first)."""
    for name in names:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def pack_runtime(out: Path, kinds: frozenset[str], wheels: bool, find_links: str | None, platform: str | None,
                 python_version: str | None) -> None:
    """wheels/ (prefbench, and with `wheels` what Kaggle lacks), requirements.txt and predict.py."""
    wheel_dir = out / "wheels"
    if wheel_dir.exists():
        shutil.rmtree(wheel_dir)
    build_wheel(wheel_dir, kinds)
    if wheels:
        download_wheels(wheel_dir, kinds, find_links, platform, python_version)
    (out / "requirements.txt").write_text(requirements(kinds))
    (out / "predict.py").write_text(ENTRY)


def bundle(out: Path, params_path: Path, adapter: Path, pretrained: str | None = None,
           copy_base: bool = False, wheels: bool = True, find_links: str | None = None,
           platform: str | None = None, python_version: str | None = None) -> Path:
    load_params(params_path)  # validates: a broken params.yaml fails here, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    model, is_llm, raw = place_model(out, params_path, adapter, pretrained, copy_base)
    _remove(out, BLEND_FILE, MEMBERS)
    pack_runtime(out, frozenset({LLM if is_llm else TFIDF}), wheels, find_links, platform, python_version)
    (out / "README.md").write_text(readme(model, is_llm, raw["models"][model], wheels))
    return out


@dataclass
class BlendMember:
    """A blend's member as the bundle takes it: its params.yaml and trained model, and its weight."""
    name: str
    params: Path
    adapter: Path
    weight: float
    rev: str | None = None  # the commit it was read at (from metrics/blend.json), for the record


def bundle_blend(out: Path, members: list[BlendMember], pretrained: dict[str, str] | None = None,
                 copy_base: bool = False, wheels: bool = True, find_links: str | None = None,
                 platform: str | None = None, python_version: str | None = None,
                 base_root: Path = Path(".")) -> Path:
    """A bundle of several models whose probabilities predict.py mixes with the weights: each
    member in members/<name>/ in the single-model layout, and blend.json (names, models,
    weights). `pretrained`: the base weights' path on Kaggle per member name or model name."""
    pretrained = pretrained or {}
    names = [m.name for m in members]
    for m in members:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", m.name):
            raise SystemExit(f"error: member name {m.name!r}: letters, digits, '.', '_' and '-' only (a folder name)")
        if not (m.weight >= 0):
            raise SystemExit(f"error: member {m.name}: weight {m.weight} is negative")
    if len(set(names)) != len(names):
        raise SystemExit(f"error: member {next(n for n in names if names.count(n) > 1)} is named twice")
    total = sum(m.weight for m in members)
    if not members or total <= 0:
        raise SystemExit("error: a blend needs a member with a positive weight")
    out.mkdir(parents=True, exist_ok=True)
    _remove(out, "adapter", "base", "params.yaml", MEMBERS)
    records, kinds, limits = [], set(), {}
    for m in members:
        params = load_params(m.params)
        path = pretrained.get(m.name, pretrained.get(params.model))  # the member's own first
        model, is_llm, raw = place_model(out / MEMBERS / m.name, m.params, m.adapter, path, copy_base, base_root)
        kinds.add(LLM if is_llm else TFIDF)
        limits[m.name] = (raw["predict"]["kaggle_rows"], raw["predict"]["kaggle_hours"])
        records.append({"name": m.name, "model": model, "kind": LLM if is_llm else TFIDF,
                        "weight": m.weight / total, "dir": f"{MEMBERS}/{m.name}", "rev": m.rev})
    unused = set(pretrained) - set(names) - {r["model"] for r in records}
    if unused:
        raise SystemExit(f"error: --pretrained {sorted(unused)[0]}=...: no member or model of that name "
                         f"(members: {', '.join(names)})")
    first = members[0].name
    for name, limit in limits.items():
        if limit != limits[first]:  # one projection for the whole bundle needs one target
            raise SystemExit(f"error: member {name}: predict.kaggle_rows, kaggle_hours {limit} where member "
                             f"{first} has {limits[first]}")
    (out / BLEND_FILE).write_text(json.dumps({"members": records, "kaggle_rows": limits[first][0],
                                              "kaggle_hours": limits[first][1]}, indent=2) + "\n")
    pack_runtime(out, frozenset(kinds), wheels, find_links, platform, python_version)
    (out / "README.md").write_text(blend_readme(records, wheels))
    return out


def members_from_blend(path: Path, work: Path, repo: Path = Path(".")) -> list[BlendMember]:
    """metrics/blend.json's members (prefbench.blend) with a positive weight: each one's
    params.yaml and models/adapter at its commit (the workspace's files for `workspace`), read
    through DVC's API into `work`."""
    from prefbench import revisions

    try:
        record = json.loads(path.read_text())
        listed = [(m["name"], m["rev"], bool(m.get("workspace")), float(m["weight"])) for m in record["members"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"error: {path}: not a metrics/blend.json of prefbench.blend ({err!r})") from None
    members = []
    for name, commit, workspace, weight in listed:
        if weight <= 0:
            print(f"bundle: member {name} has weight 0 in {path}: left out (it would only cost time)")
            continue
        if workspace:
            members.append(BlendMember(name, repo / "params.yaml", repo / "models" / "adapter", weight, commit))
            continue
        rev = revisions.resolve(commit, repo)  # the commit itself: the experiment may have been renamed
        rev = revisions.Revision(name, rev.rev, False)
        text = revisions.read_text(rev, "params.yaml", repo)
        if text is None:
            raise SystemExit(f"error: member {name} ({commit[:7]}): no params.yaml")
        (work / name).mkdir(parents=True)
        (work / name / "params.yaml").write_text(text)
        adapter = revisions.get_dir(rev, "models/adapter", work / name / "adapter", repo)
        members.append(BlendMember(name, work / name / "params.yaml", adapter, weight, commit))
    return members


def readme(model: str, is_llm: bool, entry: dict, wheels: bool) -> str:
    base = (f"Base weights: `pretrained` in params.yaml is `{entry.get('pretrained')}`; attach them as a Kaggle "
            "model input and pass its path with `--pretrained /kaggle/input/...` if it differs.\n\n") if is_llm else ""
    fetch = "" if wheels else ("`wheels/` holds prefbench only (bundled with --no-wheels): while online, "
                               "`pip download --no-deps -r requirements.txt -d wheels` first.\n\n")
    return f"""# prefbench bundle: {model}

Upload this folder as a Kaggle dataset, attach it (and the competition data) to the notebook, then:

```
!pip install --no-index --find-links /kaggle/input/<this-dataset>/wheels prefbench
!python /kaggle/input/<this-dataset>/predict.py --test-csv /kaggle/input/lmsys-chatbot-arena/test.csv --out submission.csv
```

{base}{fetch}`requirements.txt` names what predict needs beyond Kaggle's image ({", ".join(KAGGLE_HAS)} and
their requirements), pinned to the versions it was tested with; `wheels/` carries them. predict.py runs
one process per visible GPU (rows dealt by length, as the predict stage deals them to GPUs) and
prints the hours the hidden test set would take on this hardware.
"""


def blend_readme(records: list[dict], wheels: bool) -> str:
    rows = "\n".join(f"| {r['name']} | {r['model']} | {r['weight']:.4f} | `{r['dir']}` |" for r in records)
    fetch = "" if wheels else ("`wheels/` holds prefbench only (bundled with --no-wheels): while online, "
                               "`pip download --no-deps -r requirements.txt -d wheels` first.\n\n")
    return f"""# prefbench bundle: a blend of {len(records)} models

| member | model | weight | folder |
|---|---|---|---|
{rows}

Upload this folder as a Kaggle dataset, attach it (and the competition data, and each LLM's base
weights as a Kaggle model) to the notebook, then:

```
!pip install --no-index --find-links /kaggle/input/<this-dataset>/wheels prefbench
!python /kaggle/input/<this-dataset>/predict.py --test-csv /kaggle/input/lmsys-chatbot-arena/test.csv --out submission.csv
```

{fetch}Each member's `params.yaml` names its base weights (`pretrained`); `--pretrained NAME=PATH` (a member
or a model name) overrides one. predict.py runs each member as a one-model bundle runs (its rows dealt
over every visible GPU, one member after the other: `--placement shard`) or, with `--placement per-gpu`,
each LLM member on a GPU of its own, all at once; which is faster on Kaggle's 2xT4 is to be measured
there. It mixes the members' probabilities with the weights (blend.json) and prints the hours the
hidden test set would take for the whole blend. `requirements.txt` names what predict needs beyond
Kaggle's image ({", ".join(KAGGLE_HAS)} and their requirements); `wheels/` carries them.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write (upload it as a Kaggle dataset)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--adapter", default="models/adapter", help="the trained model (stage train)")
    parser.add_argument("--member", action="append", metavar="NAME=PARAMS,ADAPTER",
                        help="a blend's member (two or more): its params.yaml and trained model folder")
    parser.add_argument("--weights", help="the members' weights in --member order, comma-separated "
                        "(default: equal; normalised to sum 1)")
    parser.add_argument("--blend", type=Path, metavar="BLEND_JSON",
                        help="a blend of prefbench.blend (metrics/blend.json): each member's params and "
                        "trained model at its commit, and the weights")
    parser.add_argument("--repo", type=Path, default=Path("."), help="the DVC repository --blend reads (default: here)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--pretrained", action="append",
                       help="the base weights' path on Kaggle (LLMs), e.g. /kaggle/input/...; for a blend "
                       "NAME=PATH, NAME a member or a model, once per base")
    group.add_argument("--copy-base", action="store_true", help="copy the local base folder(s) into the bundle")
    parser.add_argument("--no-wheels", action="store_true", help="no wheels of the missing packages (README says how)")
    parser.add_argument("--find-links", help="take those wheels from this folder only (pip download --no-index)")
    parser.add_argument("--platform", help="the wheels' platform, e.g. manylinux2014_x86_64 (default: this one)")
    parser.add_argument("--python-version", help="the wheels' Python, e.g. 3.11 (default: this one)")
    args = parser.parse_args()
    wheel_args = (not args.no_wheels, args.find_links, args.platform, args.python_version)
    if not args.member and not args.blend:
        if args.pretrained and len(args.pretrained) > 1:
            parser.error("--pretrained: once for one model (NAME=PATH is for a blend's members)")
        out = bundle(Path(args.out), Path(args.params), Path(args.adapter), (args.pretrained or [None])[0],
                     args.copy_base, *wheel_args)
        what = "adapter, params.yaml"
    else:
        if args.member and args.blend:
            parser.error("--member or --blend, not both")
        pretrained = {}
        for item in args.pretrained or []:
            key, sep, path = item.partition("=")
            if not sep or not key or not path:
                parser.error(f"--pretrained {item}: NAME=PATH for a blend (NAME a member or a model)")
            pretrained[key] = path
        with tempfile.TemporaryDirectory() as tmp:
            if args.blend:
                if args.weights:
                    parser.error("--weights: --blend takes the blend's own")
                members = members_from_blend(args.blend, Path(tmp), args.repo)
            else:
                members = parse_members(parser, args.member, args.weights)
            out = bundle_blend(Path(args.out), members, pretrained, args.copy_base, *wheel_args,
                               base_root=args.repo if args.blend else Path("."))
        what = f"{len(members)} members in {MEMBERS}/, {BLEND_FILE}"
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    print(f"bundle: {out} ({size:.1f} MB): {what}, wheels/, requirements.txt, predict.py, README.md")


def parse_members(parser: argparse.ArgumentParser, items: list[str], weights: str | None) -> list[BlendMember]:
    """--member NAME=PARAMS,ADAPTER (two or more) and --weights W,W,... (default equal)."""
    if len(items) < 2:
        parser.error("--member: a blend needs two or more (one model: --params and --adapter)")
    members = []
    for item in items:
        name, sep, rest = item.partition("=")
        params, comma, adapter = rest.partition(",")
        if not (sep and comma and name and params and adapter):
            parser.error(f"--member {item}: expected NAME=PARAMS,ADAPTER")
        members.append(BlendMember(name, Path(params), Path(adapter), 1.0))
    if weights:
        try:
            values = [float(w) for w in weights.split(",")]
        except ValueError:
            parser.error(f"--weights {weights}: numbers, comma-separated")
        if len(values) != len(members):
            parser.error(f"--weights: {len(values)} weights for {len(members)} members")
        for m, w in zip(members, values):
            m.weight = w
    return members


if __name__ == "__main__":
    from prefbench.cli import run

    run(main)
