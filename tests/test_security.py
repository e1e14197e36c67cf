"""Security: no remote code from model folders, no unpickling, no hub token in any output.

(a) `trust_remote_code` is never turned on, and a model folder whose config.json /
    tokenizer_config.json carry an `auto_map` to Python files in the folder does not get that code
    run by prefbench.models (a control shows the same folder does run it with trust_remote_code=True).
(b) No pickle-based loading (pickle, joblib, dill, torch.load without weights_only=True, ...) in
    prefbench/ and stages/.
(c) With HF_TOKEN and HUGGING_FACE_HUB_TOKEN set and the model a hub id (from an offline cache, so
    the loads read the token), a full `dvc repro` of a small pipeline writes the token nowhere: not
    in any output, metric, plot, adapter file, the DVC cache, run cache or logs, nor on stdout/stderr.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.gitcopy import ROOT, dvc, git_commit, git_copy, shrink_params, warm_env
from tests import forked

SOURCE_DIRS = ("prefbench", "stages")
EVIL_MODULES = ("configuration_evil", "modeling_evil", "tokenization_evil")
HF_TOKEN = "hf_SECRETtoken123"
LEGACY_TOKEN = "hf_SECRETlegacy456"


def sources() -> list[Path]:
    files = sorted(p for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py"))
    assert len(files) >= 10, files  # the scan sees the package, not an empty folder
    return files


def parsed() -> list[tuple[Path, ast.AST]]:
    return [(p, ast.parse(p.read_text(), filename=str(p))) for p in sources()]


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)[:120]}"


# ------------------------------------------------------------------ (a) remote code

def _is_false(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def test_trust_remote_code_is_never_enabled():
    """As a keyword argument, a dict key (for **kwargs) or an attribute, trust_remote_code is
    only ever the literal False."""
    bad = []
    for path, tree in parsed():
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code" and not _is_false(node.value):
                bad.append(where(path, node.value))
            if isinstance(node, ast.Dict):
                bad += [where(path, node) for k, v in zip(node.keys, node.values)
                        if isinstance(k, ast.Constant) and k.value == "trust_remote_code" and not _is_false(v)]
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Attribute) and t.attr == "trust_remote_code" for t in targets) \
                        and not _is_false(node.value):
                    bad.append(where(path, node))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr" \
                    and len(node.args) == 3 and isinstance(node.args[1], ast.Constant) \
                    and node.args[1].value == "trust_remote_code" and not _is_false(node.args[2]):
                bad.append(where(path, node))
    assert not bad, "trust_remote_code enabled:\n" + "\n".join(bad)


def is_model_class(node: ast.AST) -> bool:
    """`Auto*` or `classifier_class(...)` (prefbench.models: transformers' own *ForSequenceClassification)."""
    if isinstance(node, ast.Name):
        return node.id.startswith("Auto")
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "classifier_class"


def test_every_transformers_auto_load_passes_trust_remote_code_false():
    """Every Auto*.from_pretrained call says trust_remote_code=False explicitly (the default
    is None: on a folder with an auto_map and no built-in class transformers may prompt)."""
    calls, bad = 0, []
    for path, tree in parsed():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "from_pretrained" and is_model_class(node.func.value)):
                continue
            calls += 1
            kw = {k.arg: k.value for k in node.keywords if k.arg}
            value = kw.get("trust_remote_code")
            if not (isinstance(value, ast.Constant) and value.value is False):
                bad.append(where(path, node))
    assert calls >= 3, "expected AutoTokenizer, AutoConfig and the classifier's loads in prefbench.models"
    assert not bad, "Auto*.from_pretrained without trust_remote_code=False:\n" + "\n".join(bad)


def evil_model_folder(dst: Path, markers: Path, model_type: str | None = None) -> Path:
    """A copy of models/tiny-llama3 whose config.json and tokenizer_config.json map the Auto
    classes to Python files in the folder; importing any of them writes a file into `markers`."""
    shutil.copytree(ROOT / "models" / "tiny-llama3", dst)
    markers.mkdir(parents=True, exist_ok=True)
    for module in EVIL_MODULES:
        code = f"import pathlib\npathlib.Path({str(markers / module)!r}).write_text('custom code ran')\n"
        if module == "configuration_evil":  # a real config class, so loading goes on to the others
            code += "from transformers import LlamaConfig\n\n\nclass EvilConfig(LlamaConfig):\n    pass\n"
        (dst / f"{module}.py").write_text(code)
    config = json.loads((dst / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                          "AutoModel": "modeling_evil.EvilModel",
                          "AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    if model_type:
        config["model_type"] = model_type
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    tok = json.loads((dst / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", "tokenization_evil.EvilTokenizer"]}
    if model_type:
        tok["tokenizer_class"] = "EvilTokenizer"
    (dst / "tokenizer_config.json").write_text(json.dumps(tok, indent=2))
    return dst


def model_params(pretrained: Path):
    """The default params.yaml's selected model, pointed at `pretrained`."""
    from prefbench.config import parse_params

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["models"][raw["model"]]["pretrained"] = str(pretrained)
    return parse_params(raw).selected


def trusted_load(folder: Path) -> subprocess.CompletedProcess:
    """Control, in a child process (on the session's warm server: its transformers imported with the
    session's own HF_MODULES_CACHE, tests/conftest.py): transformers itself with trust_remote_code=True."""
    code = (
        "import sys, transformers\n"
        "for cls in ('AutoTokenizer', 'AutoModelForSequenceClassification'):\n"
        "    try:\n"
        "        getattr(transformers, cls).from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "    except Exception as e:\n"
        "        print(cls, type(e).__name__, e)\n"
    )
    return forked.run("-c", code, folder, cwd=folder.parent)


def test_auto_map_custom_code_is_not_run_for_a_known_architecture(tmp_path):
    """model_type llama + auto_map: prefbench loads the built-in Llama classes and never imports
    the folder's Python files."""
    from prefbench.models import load_model, load_tokenizer

    markers = tmp_path / "markers"
    folder = evil_model_folder(tmp_path / "llama-with-auto-map", markers)

    tok = load_tokenizer(str(folder))
    assert type(tok).__module__.startswith("transformers."), type(tok)
    assert tok("hello world")["input_ids"]  # a working tokenizer
    model, dtype, weights = load_model(model_params(folder), tok.pad_token_id, torch.device("cpu"))
    assert type(model).__name__ == "LlamaForSequenceClassification", type(model)
    assert type(model).__module__ == "transformers.models.llama.modeling_llama", type(model).__module__
    assert weights == "pretrained" and dtype == torch.float64
    assert not any(markers.iterdir()), f"custom code ran: {sorted(p.name for p in markers.iterdir())}"
    assert not any(m.startswith("transformers_modules") for m in sys.modules)

    # Control: the folder is genuinely armed; trusting it runs all three files.
    control = trusted_load(folder)
    ran = sorted(p.name for p in markers.iterdir())
    assert ran == sorted(EVIL_MODULES), f"control did not run the folder's code: {ran}\n{control.stdout}{control.stderr[-2000:]}"


def test_auto_map_custom_architecture_is_refused_with_a_clear_error(tmp_path):
    """An architecture transformers does not know (custom model_type + auto_map) cannot be loaded
    without remote code: prefbench fails with transformers' error naming trust_remote_code, and
    the folder's code never runs."""
    from prefbench.models import load_model, load_tokenizer

    markers = tmp_path / "markers"
    folder = evil_model_folder(tmp_path / "custom-arch", markers, model_type="evil_custom")

    with pytest.raises(ValueError, match=r"contains custom code[\s\S]*trust_remote_code=True"):
        load_tokenizer(str(folder))
    with pytest.raises(ValueError, match=r"contains custom code[\s\S]*trust_remote_code=True"):
        load_model(model_params(folder), 0, torch.device("cpu"))
    assert not any(markers.iterdir()), f"custom code ran: {sorted(p.name for p in markers.iterdir())}"


# ------------------------------------------------------------------ (b) unpickling

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
PICKLE_CALLS = {"read_pickle", "to_pickle"}  # pandas


def _is_weights_only_true(call: ast.Call) -> bool:
    return any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
               for k in call.keywords)


def pickle_findings(trees: list[tuple[Path, ast.AST]]) -> list[str]:
    """Every pickle-based load or import in `trees`: pickle & co. imported, torch.load (or an
    alias of it) without weights_only=True, pandas read_pickle/to_pickle, allow_pickle."""
    bad = []
    for path, tree in trees:
        torch_names, load_aliases = {"torch"}, set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] in PICKLE_MODULES:
                        bad.append(where(path, node))
                    if a.name == "torch":
                        torch_names.add(a.asname or "torch")
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.module.split(".")[0] in PICKLE_MODULES or node.module.startswith("torch.serialization"):
                    bad.append(where(path, node))
                if node.module == "torch":
                    load_aliases |= {a.asname or a.name for a in node.names if a.name == "load"}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            is_torch_load = (isinstance(func, ast.Attribute) and func.attr == "load"
                             and isinstance(func.value, ast.Name) and func.value.id in torch_names) or (
                isinstance(func, ast.Name) and func.id in load_aliases)
            if is_torch_load and not _is_weights_only_true(node):
                bad.append(where(path, node) + "  (torch.load needs weights_only=True)")
            if isinstance(func, ast.Attribute) and func.attr in PICKLE_CALLS:
                bad.append(where(path, node))
            if any(k.arg == "allow_pickle" and not _is_false(k.value) for k in node.keywords):
                bad.append(where(path, node) + "  (allow_pickle)")
            # pickle & co. reached without an import statement
            dynamic = (isinstance(func, ast.Name) and func.id == "__import__") or (
                isinstance(func, ast.Attribute) and func.attr == "import_module")
            if dynamic and node.args and isinstance(node.args[0], ast.Constant) \
                    and str(node.args[0].value).split(".")[0] in PICKLE_MODULES:
                bad.append(where(path, node))
    return bad


def test_no_pickle_joblib_or_unsafe_torch_load():
    bad = pickle_findings(parsed())
    assert not bad, "pickle-based loading:\n" + "\n".join(bad)


@pytest.mark.parametrize("code, flagged", [
    ("import pickle", True),
    ("from joblib import load", True),
    ("import torch\ntorch.load('x')", True),
    ("import torch as T\nT.load('x', weights_only=False)", True),
    ("from torch import load as L\nL('x')", True),
    ("import numpy as np\nnp.load('x', allow_pickle=True)", True),
    ("import pandas as pd\npd.read_pickle('x')", True),
    ("import importlib\nimportlib.import_module('pickle')", True),
    ("import torch\ntorch.load('x', weights_only=True)", False),
    ("import json\njson.load(open('x'))", False),
    ("from safetensors.torch import load_file\nload_file('x')", False),
])
def test_pickle_scan_is_not_vacuous(code, flagged):
    assert bool(pickle_findings([(ROOT / "probe.py", ast.parse(code))])) == flagged


# ------------------------------------------------------------------ (c) hub tokens

HUB_ID = "prefbench-test/tiny-llama3"
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def offline_hub_cache(cache: Path) -> Path:
    """A huggingface_hub cache holding models/tiny-llama3 as the hub repo HUB_ID: with the hub
    offline, transformers resolves HUB_ID from it through huggingface_hub, as it would a download."""
    repo = cache / f"models--{HUB_ID.replace('/', '--')}"
    shutil.copytree(ROOT / "models" / "tiny-llama3", repo / "snapshots" / HUB_COMMIT, dirs_exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    return cache


def test_hub_tokens_never_written_by_the_pipeline(tmp_path, monkeypatch):
    """A full small `dvc repro` with both token variables set, the selected model a hub id (served
    from a local offline cache), so the model and tokenizer loads read the token: no file anywhere
    in the repo copy (outputs, metrics, dvclive, adapter incl. resolved_params.json and README.md,
    dvc.lock, the DVC cache and run cache, .dvc/tmp) and neither stdout nor stderr contains either token."""
    import huggingface_hub.utils._auth as hub_auth

    from prefbench.models import load_tokenizer

    repo = git_copy(tmp_path / "repo")
    shrink_params(repo, rows=120, test_rows=30)
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["models"][raw["model"]]["pretrained"] = HUB_ID
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    git_commit(repo, "small params, the model from the hub")
    copied = {p: p.read_bytes() for p in repo.rglob("*")
              if p.is_file() and ".git" not in p.relative_to(repo).parts[:1]}
    # the session's own hub cache (tests/conftest.py), which the warm server's huggingface_hub and
    # this process's read while importing
    cache = offline_hub_cache(Path(os.environ["HF_HUB_CACHE"]))
    assert hub_auth.constants.HF_HUB_CACHE == str(cache)
    tokens = {"HF_TOKEN": HF_TOKEN, "HUGGING_FACE_HUB_TOKEN": LEGACY_TOKEN}

    # the premise: loading the selected model as the stages do reads the token from the environment
    reads = []
    real = hub_auth._get_token_from_environment
    monkeypatch.setattr(hub_auth, "_get_token_from_environment", lambda: reads.append(real()) or reads[-1])
    for name, value in tokens.items():
        monkeypatch.setenv(name, value)
    load_tokenizer(raw["models"][raw["model"]]["pretrained"])
    assert HF_TOKEN in reads, reads

    # DVC and the stages on the session's warm interpreter server (tests/forked.py); each stage gets
    # the environment of `dvc repro`, tokens included
    proc = subprocess.run([dvc(), "repro"], cwd=repo, capture_output=True, text=True, env=warm_env(**tokens))
    assert proc.returncode == 0, f"dvc repro failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    for stage in stages:
        assert f"Running stage '{stage}'" in proc.stdout, proc.stdout[-3000:]

    # what must have been written, so the scan below is not a scan of nothing
    for out in ("metrics/eval.json", "metrics/predictions.csv", "models/adapter/resolved_params.json",
                "models/adapter/README.md", "models/adapter/adapter_config.json", "dvc.lock"):
        assert (repo / out).is_file(), out
    resolved = json.loads((repo / "models" / "adapter" / "resolved_params.json").read_text())
    assert resolved["models"]["pretrained"] == HUB_ID and resolved["weights"] == "pretrained"  # the hub model
    assert any((repo / "dvclive").rglob("*.tsv")) and any((repo / ".dvc" / "cache").rglob("*"))

    secrets = [t.encode() for t in (HF_TOKEN, LEGACY_TOKEN, "SECRETtoken", "SECRETlegacy")]
    leaks = [name for name, text in (("stdout", proc.stdout), ("stderr", proc.stderr))
             if any(s.decode() in text for s in secrets)]
    scanned = 0
    for path in repo.rglob("*"):
        if ".git" in path.relative_to(repo).parts[:1]:
            continue  # holds only the commits of the copy made above, before the run
        if any(s.decode() in path.name for s in secrets):
            leaks.append(f"file name: {path}")
        if path.is_file() and not path.is_symlink():
            if copied.get(path) == path.read_bytes():
                continue  # a source file of the repo, untouched by the run (this test file among them)
            scanned += 1
            data = path.read_bytes()
            if any(s in data for s in secrets):
                leaks.append(str(path.relative_to(repo)))
    assert scanned > 30, scanned
    assert not leaks, f"hub token written to: {leaks}"
