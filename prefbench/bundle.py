"""A folder to upload as a Kaggle dataset: everything the offline scoring notebook needs to predict.

Usage: python -m prefbench.bundle --out DIR [--params params.yaml] [--adapter models/adapter]
                                  [--pretrained PATH_ON_KAGGLE | --copy-base]

DIR holds:
  adapter/          the trained adapter and score head (for `tfidf`: the fitted featuriser and classifier)
  base/             with --copy-base: the local `pretrained` folder (tiny models, tests)
  params.yaml       the resolved params: only the selected model, `pretrained` as it will be on Kaggle
  wheels/           prefbench itself as a wheel (pip wheel --no-deps)
  requirements.txt  the packages predict imports, pinned to this environment's versions
  predict.py        the entry: one `python -m stages.predict` per GPU (rows dealt by length as the
                    predict stage deals them), one submission.csv, the projected hours
  README.md         the commands, in the notebook's order

Kaggle's scoring notebook has no internet: attach DIR (and, for an LLM, the base weights as a
Kaggle model) and run the commands in DIR/README.md. Nothing here pickles: adapters are safetensors,
the tfidf model safetensors and JSON.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import yaml

from prefbench.config import TfidfParams, load_params

ROOT = Path(__file__).resolve().parents[1]  # the source checkout the wheel is built from
# What `python -m stages.predict` imports, directly or through the libraries (prefbench's own
# dependencies minus dvc/dvclive, which only the pipeline needs).
RUNTIME = ("torch", "transformers", "tokenizers", "safetensors", "huggingface-hub", "peft", "accelerate",
           "numpy", "pandas", "pyarrow", "scikit-learn", "scipy", "pyyaml", "tqdm")
ENTRY = '''"""Kaggle entry point of a prefbench bundle: see README.md beside this file."""
from pathlib import Path

from prefbench.kaggle_predict import main

main(bundle=Path(__file__).resolve().parent)
'''


def requirements() -> str:
    """One `name==version` line per runtime package, as installed here (local labels dropped)."""
    # The public version: a local label (torch's +cpu, +cu128) names a build, which Kaggle's own has.
    lines = [f"{name}=={metadata.version(name).split('+')[0]}" for name in RUNTIME]
    return "# pip download -r requirements.txt -d wheels  (online), then on Kaggle:\n" \
           "# pip install --no-index --find-links wheels -r requirements.txt\n" + "\n".join(lines) + "\n"


def build_wheel(dest: Path) -> Path:
    """prefbench as a wheel in `dest`, built from a copy of the sources (setuptools writes build/
    and *.egg-info beside what it builds; the checkout stays clean). No network: the venv's
    setuptools builds it (--no-build-isolation)."""
    if not (ROOT / "pyproject.toml").is_file():
        raise SystemExit(f"error: no pyproject.toml in {ROOT}: run prefbench.bundle from a prefbench checkout")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        shutil.copy2(ROOT / "pyproject.toml", src / "pyproject.toml")
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
           copy_base: bool = False) -> Path:
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
    wheels = out / "wheels"
    if wheels.exists():
        shutil.rmtree(wheels)
    wheel = build_wheel(wheels)
    (out / "requirements.txt").write_text(requirements())
    (out / "predict.py").write_text(ENTRY)
    (out / "README.md").write_text(readme(params.model, wheel.name, is_llm, raw["models"][params.model]))
    return out


def readme(model: str, wheel: str, is_llm: bool, entry: dict) -> str:
    base = (f"Base weights: `pretrained` in params.yaml is `{entry.get('pretrained')}`; attach them as a Kaggle "
            "model input and pass its path with `--pretrained /kaggle/input/...` if it differs.\n\n") if is_llm else ""
    return f"""# prefbench bundle: {model}

Upload this folder as a Kaggle dataset, attach it (and the competition data) to the notebook, then:

```
!pip install --no-index --no-deps /kaggle/input/<this-dataset>/wheels/{wheel}
!python /kaggle/input/<this-dataset>/predict.py --test-csv /kaggle/input/lmsys-chatbot-arena/test.csv --out submission.csv
```

{base}`requirements.txt` lists the packages predict imports at the versions it was tested with; Kaggle's
image has most of them. Any that differ: `pip download -r requirements.txt -d wheels` while online,
add them to `wheels/`, and install with `pip install --no-index --find-links wheels -r requirements.txt`.
predict.py runs one process per visible GPU (rows dealt by length, as the predict stage deals
them to GPUs) and prints the hours 25,000 rows would take on this hardware.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write (upload it as a Kaggle dataset)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--adapter", default="models/adapter", help="the trained model (stage train)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--pretrained", help="the base weights' path on Kaggle (LLMs), e.g. /kaggle/input/...")
    group.add_argument("--copy-base", action="store_true", help="copy the local base folder into the bundle")
    args = parser.parse_args()
    out = bundle(Path(args.out), Path(args.params), Path(args.adapter), args.pretrained, args.copy_base)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    print(f"bundle: {out} ({size:.1f} MB): adapter, params.yaml, wheels/, requirements.txt, predict.py, README.md")


if __name__ == "__main__":
    from prefbench.cli import run

    run(main)
