"""A folder to upload as a Kaggle dataset: everything the offline scoring notebook needs to predict.

Usage: python -m prefbench.bundle --out DIR [--params params.yaml] [--adapter models/adapter]
                                  [--pretrained PATH_ON_KAGGLE | --copy-base]

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


def runtime(is_llm: bool) -> tuple[str, ...]:
    return RUNTIME + (RUNTIME_LLM if is_llm else RUNTIME_TFIDF)


def missing(is_llm: bool) -> dict[str, str]:
    """name -> version (installed here, local label dropped) of every package predict needs that
    Kaggle's image (KAGGLE_HAS and their requirements) lacks."""
    # The public version: a local label (+cpu, +cu128) names a build, not an API.
    return {name: metadata.version(name).split("+")[0]
            for name in sorted(closure(runtime(is_llm)) - closure(KAGGLE_HAS))}


def requirements(is_llm: bool) -> str:
    lines = [f"{name}=={version}" for name, version in missing(is_llm).items()]
    return (f"# What predict needs beyond Kaggle's image ({', '.join(KAGGLE_HAS)} and their requirements);\n"
            "# wheels/ holds them: pip install --no-index --find-links wheels prefbench\n" + "\n".join(lines) + "\n")


def download_wheels(dest: Path, is_llm: bool, find_links: str | None, platform: str | None,
                    python_version: str | None) -> None:
    """The wheels of `missing` into `dest` (pip download: the configured index, or only `find_links`)."""
    pins = [f"{name}=={version}" for name, version in missing(is_llm).items()]
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


def build_wheel(dest: Path, is_llm: bool) -> Path:
    """prefbench as a wheel in `dest`, built from a copy of the sources (setuptools writes build/
    and *.egg-info beside what it builds; the checkout stays clean), requiring only what predict
    imports for this kind of model: no DVC. No network: the venv's setuptools builds it
    (--no-build-isolation)."""
    if not (ROOT / "pyproject.toml").is_file():
        raise SystemExit(f"error: no pyproject.toml in {ROOT}: run prefbench.bundle from a prefbench checkout")
    pins = missing(is_llm)
    deps = [f"{_norm(n)}=={pins[_norm(n)]}" if _norm(n) in pins else _norm(n) for n in runtime(is_llm)]
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


def bundle(out: Path, params_path: Path, adapter: Path, pretrained: str | None = None,
           copy_base: bool = False, wheels: bool = True, find_links: str | None = None,
           platform: str | None = None, python_version: str | None = None) -> Path:
    params = load_params(params_path)
    if not (adapter / "resolved_params.json").is_file():
        raise SystemExit(f"error: {adapter} holds no trained model (resolved_params.json): run `dvc repro` first")
    out.mkdir(parents=True, exist_ok=True)
    if (out / "adapter").exists():
        shutil.rmtree(out / "adapter")
    shutil.copytree(adapter, out / "adapter")
    is_llm = not isinstance(params.selected, TfidfParams)
    if copy_base and is_llm:
        base = Path(params.selected.pretrained)
        if not base.is_dir():
            raise SystemExit(f"error: --copy-base: models.{params.model}.pretrained {base} is not a local folder")
        if (out / "base").exists():
            shutil.rmtree(out / "base")
        shutil.copytree(base, out / "base")
        pretrained = "base"  # relative to the bundle: predict.py resolves it
    raw = resolved_params(params_path, pretrained)
    (out / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    wheel_dir = out / "wheels"
    if wheel_dir.exists():
        shutil.rmtree(wheel_dir)
    wheel = build_wheel(wheel_dir, is_llm)
    if wheels:
        download_wheels(wheel_dir, is_llm, find_links, platform, python_version)
    (out / "requirements.txt").write_text(requirements(is_llm))
    (out / "predict.py").write_text(ENTRY)
    (out / "README.md").write_text(readme(params.model, is_llm, raw["models"][params.model], wheels))
    return out


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write (upload it as a Kaggle dataset)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--adapter", default="models/adapter", help="the trained model (stage train)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--pretrained", help="the base weights' path on Kaggle (LLMs), e.g. /kaggle/input/...")
    group.add_argument("--copy-base", action="store_true", help="copy the local base folder into the bundle")
    parser.add_argument("--no-wheels", action="store_true", help="no wheels of the missing packages (README says how)")
    parser.add_argument("--find-links", help="take those wheels from this folder only (pip download --no-index)")
    parser.add_argument("--platform", help="the wheels' platform, e.g. manylinux2014_x86_64 (default: this one)")
    parser.add_argument("--python-version", help="the wheels' Python, e.g. 3.11 (default: this one)")
    args = parser.parse_args()
    out = bundle(Path(args.out), Path(args.params), Path(args.adapter), args.pretrained, args.copy_base,
                 not args.no_wheels, args.find_links, args.platform, args.python_version)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    print(f"bundle: {out} ({size:.1f} MB): adapter, params.yaml, wheels/, requirements.txt, predict.py, README.md")


if __name__ == "__main__":
    from prefbench.cli import run

    run(main)
