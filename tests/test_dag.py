"""dvc.yaml cannot go stale: each stage's deps list exactly the repo's Python files its script
imports (transitively), and each stage reads only its own params section and its model's."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = DVC_YAML["stages"]
PACKAGES = ("prefbench", "stages")  # the repo's own importable code


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The repo file of a dotted module name, or None for a third-party module."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module named by an import statement in `path` (also imports inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from prefbench import data`
    return names


def import_closure(module: str, root: Path = ROOT) -> set[Path]:
    """The repo files `module` needs at run time: itself and all it imports, transitively.
    Package `__init__.py` files are left out (empty here: they hold no code a stage runs)."""
    todo, seen = [module], set()
    while todo:
        path = module_file(todo.pop(), root)
        if path is None or path in seen:
            continue
        seen.add(path)
        todo += imported_modules(path)
    return {p for p in seen if p.name != "__init__.py"}


def stage_module(cmd: str) -> str:
    match = re.search(r"-m (stages\.\w+)", cmd)
    assert match, f"cannot find `-m stages.<name>` in {cmd!r}"
    return match.group(1)


def missing_and_extra(stage: dict, root: Path = ROOT) -> tuple[list[str], list[str]]:
    needed = {p.relative_to(root).as_posix() for p in import_closure(stage_module(stage["cmd"]), root)}
    listed = {d for d in stage.get("deps", []) if d.endswith(".py")}
    return sorted(needed - listed), sorted(listed - needed)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_are_its_import_closure(name):
    missing, extra = missing_and_extra(STAGES[name])
    assert not missing, f"dvc.yaml stage {name!r}: deps lack {missing}, which its script imports"
    assert not extra, f"dvc.yaml stage {name!r}: deps list {extra}, which its script never imports"


def test_the_closure_check_fails_on_a_missing_import(tmp_path):
    """The check above can fail: a stage whose script imports one more library module."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "prefbench" / "a.py").write_text("import numpy\nfrom prefbench import b\n")
    (tmp_path / "prefbench" / "b.py").write_text("def f():\n    from prefbench.c import g\n")
    (tmp_path / "prefbench" / "c.py").write_text("g = 1\n")
    (tmp_path / "stages" / "s.py").write_text("from prefbench.a import x\n")
    stage = {"cmd": "sh scripts/python.sh -m stages.s", "deps": ["stages/s.py", "prefbench/a.py", "data/x"]}
    assert missing_and_extra(stage, tmp_path) == (["prefbench/b.py", "prefbench/c.py"], [])
    stage["deps"] += ["prefbench/b.py", "prefbench/c.py", "prefbench/__init__.py"]
    assert missing_and_extra(stage, tmp_path) == ([], ["prefbench/__init__.py"])


# A stage reads its own params section and the selected model's; these exceptions are explicit.
CROSS_SECTION = {
    # predict tokenises test.csv exactly as the tokenize stage tokenised the training rows.
    ("predict", "tokenize.prompt_share"),
}
OWN_SECTION = {"params": "params.yaml",  # the params stage checks the whole file
               "sample": "sample", "prepare": "data", "tokenize": "tokenize", "train": "train",
               "evaluate": "evaluate", "predict": "predict"}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_reads_its_own_params_section_and_its_models(name):
    for key in STAGES[name].get("params", []):
        key = key if isinstance(key, str) else next(iter(key))
        own = key == OWN_SECTION[name] or key.startswith(OWN_SECTION[name] + ".")
        model = key in ("model", "models.${model}") or key.startswith("models.${model}.")
        assert own or model or (name, key) in CROSS_SECTION, f"stage {name!r} reads params key {key!r}"
