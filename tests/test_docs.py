"""The docs' CPU numbers are what benchmarks/cpu_report.py makes of the committed files, and the
docs' links lead somewhere. Blocks that other generators own (the GPU ones) are left as they are."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from benchmarks.cpu_report import BLOCKS, FILES, render_file
from benchmarks.docgen import blocks_in, documents
from tests.conftest import ROOT

DOCS = documents(ROOT)
PAGES = [*DOCS, ROOT / "CONTRIBUTING.md"]  # whose links are checked
README_MAX_LINES = 300
# Pages written on other branches at the same time as this test; checked as soon as they exist.
NOT_YET = {"docs/performance.md", "docs/faults.md"}


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_page_is_its_rendering(path):
    assert render_file(path) == path.read_text(), (
        f"{path.relative_to(ROOT)} differs from its committed files: python -m benchmarks report")


def test_every_cpu_block_is_quoted_somewhere():
    used = {name for path in DOCS for name in blocks_in(path.read_text())}
    assert set(BLOCKS) <= used, sorted(set(BLOCKS) - used)


def copy_inputs(dest: Path) -> Path:
    """The files the CPU blocks read, at their paths under `dest`."""
    for rel in {rel for files in FILES.values() for rel in files}:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    return dest


def test_a_changed_number_changes_the_pages(tmp_path):
    """Edit one number in a copy of each of two committed files: the pages rendered from the copy
    show the new numbers and differ from the committed pages."""
    root = copy_inputs(tmp_path)
    ref = json.loads((root / "metrics/reference.json").read_text())
    ref["models"]["llama3"]["log_loss"] = 0.123456
    (root / "metrics/reference.json").write_text(json.dumps(ref))
    repro = root / "benchmarks/results/cpu-repro.jsonl"
    runs = [json.loads(line) for line in repro.read_text().splitlines()]
    portable = next(run for run in runs if run.get("run") == "f64-portable")
    committed = dict(portable)
    portable["log_loss"] += 0.001
    repro.write_text("".join(json.dumps(run) + "\n" for run in runs))

    readme = render_file(ROOT / "README.md", root)
    assert readme != (ROOT / "README.md").read_text()
    assert "| llama3 | 0.1235 |" in readme
    page = render_file(ROOT / "docs/reproducibility.md", root)
    assert (f"| `f64-portable` | llama3 | float64 | `OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default` | "
            f"{committed['log_loss'] + 0.001:.6f} | {committed['accuracy']:.6f} | log-loss +0.001000 |") in page


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, at most {README_MAX_LINES}: move detail to docs/"


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a Markdown page's headings."""
    heads = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_links_between_pages_resolve():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            rel, _, anchor = target.partition("#")
            path = (page.parent / rel).resolve() if rel else page
            if str(path.relative_to(ROOT.resolve())) in NOT_YET and not path.exists():
                continue
            if not path.exists() or (anchor and anchor not in anchors(path)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken
