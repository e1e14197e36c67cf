"""The benchmark command runs on a CPU with the tiny models (the same code as on a GPU), merges its
parts, records what could not run, and the committed docs are what `report` makes of the
committed results."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from benchmarks import docgen, headline, inference, report, settings
from tests import forked
from tests.conftest import ROOT

HEADLINE_KEYS = ("commit", "date", "device", "versions", "peak_bf16_flops_measured", "peak_bf16_flops_datasheet",
                 "inference", "flop_ratio_gemma2_over_llama3", "evaluate_stage", "train_stage")


def bench(*args: str) -> subprocess.CompletedProcess:
    """`python -m benchmarks args` on the session's warm server; the stages it starts run there too
    (through $PREFBENCH_PYTHON, as dvc.yaml's scripts/python.sh does)."""
    return forked.run("-m", "benchmarks", *args, env={**os.environ, "PREFBENCH_PYTHON": str(forked.server().python)})


def test_parts_run_separately_merge_into_one_headline(tmp_path):
    out = tmp_path / "cpu"
    proc = bench("run", "--out", str(out), "--only", "inference", "--rows", "6", "--reps", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.loads((out / "headline.json").read_text())
    assert "inference" in first and "evaluate_stage" not in first and "train_stage" not in first
    proc = bench("run", "--out", str(out), "--only", "evaluate,train", "--rows", "6", "--steps", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    head = json.loads((out / "headline.json").read_text())
    assert all(k in head for k in HEADLINE_KEYS) and head["not_run"] == []
    assert set(head["parts"]) == {"inference", "evaluate", "train"}
    # every family through inference; the evaluate and train parts by default the first two (--stage-models)
    assert list(head["inference"]) == list(settings.TINY_MODELS)
    assert list(head["evaluate_stage"]) == list(head["train_stage"]) == list(settings.TINY_MODELS[:settings.TRAIN_FAMILIES])
    assert {r["family"] for r in head["inference"].values()} == {"llama", "gemma2", "qwen2", "mistral"}
    for name, r in head["inference"].items():
        for path in ("default", "padded"):
            cell = r[path]
            assert cell["s_per_sample"] > 0 and cell["mfu"] > 0 and cell["checked"], (name, path, cell)
            assert cell["max_rel_error"] < 1e-6  # float64 on a CPU: the fp32 reference's rounding only
        assert r["profile_ms_per_sample"] and sum(r["profile_ms_per_sample"].values()) > 0
        ev = head["evaluate_stage"].get(name)
        # the stage on the same rows, compared with the inference part's default cell
        assert ev is None or ev["over_benchmark"] == pytest.approx(ev["s_per_sample"] / r["default"]["s_per_sample"])
    for tr in head["train_stage"].values():
        assert tr["steps"] >= 2 and tr["tokens_match"] and tr["mfu"] > 0 and tr["steady_mfu"] > 0
    # Gemma2's FLOPs against Llama3's on the same rows: the tiny Gemma2 is the larger of the two
    assert head["flop_ratio_gemma2_over_llama3"] > 1
    assert {"inference.log", "evaluate.log", "train.log", "MANIFEST.md"} <= {p.name for p in out.iterdir()}
    assert "  | train:" in (out / "train.log").read_text()  # the stage's own output, in the raw log
    manifest = (out / "MANIFEST.md").read_text()
    assert "--only inference" in manifest and "--only evaluate,train" in manifest
    # the docs' blocks render from this folder (the CPU run stands in for a GPU one)
    blocks = report.gpu_blocks(out)
    assert "tiny-gemma2" in blocks["headline"](ROOT) and "| total |" in blocks["perf-profile"](ROOT)
    assert "| default-path MFU (measured peak) | tiny-gemma2 |" in blocks["perf-distance"](ROOT)


def test_distance_block_says_what_reaching_each_level_takes(tmp_path):
    head = {"inference": {"llama3-8b": {"default": {"mfu": 0.80, "s_per_sample": 0.010},
                                        "fp8": {"s_per_sample": 0.007, "over_bf16_default": 0.7}},
                          "gemma2-9b": {"default": {"mfu": 0.90, "s_per_sample": 0.012}}},
            "s_per_sample_ratio_gemma2_over_llama3": {"default": 1.2}, "flop_ratio_gemma2_over_llama3": 1.2,
            "train_stage": {"llama3-8b": {"mfu": 0.5, "tokens_per_s": 10000.0, "steady_mfu": 0.55}}}
    (tmp_path / "headline.json").write_text(json.dumps(head))
    lines = report.distance_block(tmp_path).splitlines()
    # 0.80 -> 0.85 of the peak: the time x 0.80 / 0.85, 0.59 ms of 10 ms less
    assert "| Llama3-8B | 0.800 | 0.85 | no | 0.59 ms/sample less (5.9%) |" in lines[2]
    assert "| Gemma2-9B | 0.900 | 0.85 | yes |  |" in lines[3]
    assert "| both | 1.000 | 1.03 | yes |" in lines[4]
    # fp8 at 0.7x: 7 ms - 0.6 x 10 ms = 1 ms of its 7 ms less
    assert "| 0.700 | 0.6 | no | 1.00 ms/sample less (14% of fp8's time) |" in lines[5]
    assert "12,000 tokens/s (now 10,000; steady second half 0.550 MFU)" in lines[6]


def test_what_is_left_splits_a_train_step_into_matmuls_other_device_work_and_the_host(tmp_path):
    prof = {"ms_per_step": 90.0, "wall_ms_per_step": 100.0, "tokens_per_step": 1000,
            "by_category_ms_per_step": {"matmul": 60.0, "attention": 30.0}}
    head = {"train_stage": {"llama3-8b": {"profile": prof, "tokens_per_s": 900.0, "steady_tokens_per_s": 1000.0}}}
    (tmp_path / "headline.json").write_text(json.dumps(head))
    last = report.left_block(tmp_path).splitlines()[-1]
    # 60 of 100 ms in matmuls, 30 in other kernels, 10 the GPU waits; 900 against 1000 tokens/s steady: 10%
    assert last == "| Llama3-8B | 60% | 30% | 10% | 10% |"


def test_docs_render_from_the_newest_comparison_and_show_newer_partial_runs(tmp_path):
    def run(name, date, **parts):
        folder = tmp_path / name
        folder.mkdir()
        head = {"date": date, "commit": name, "device": {"name": f"card-{name}", "count": 1, "driver": "1"},
                "versions": {"torch": "x", "transformers": "y"}, "peak_bf16_flops_measured": 7e14,
                "parts": {p: {"command": f"python -m benchmarks run --only {p}"} for p in parts}, "not_run": [],
                **parts}
        (folder / "headline.json").write_text(json.dumps(head))
        return folder

    cell = {"s_per_sample": 0.01, "mfu": 0.8, "attn": "a", "kernels": "k", "packed": True, "tokens_per_s": 1.0,
            "mfu_datasheet": 0.6, "padding_share": 0.0, "max_rel_error": 0.1, "plain_eager_max_rel_error": 0.1,
            "checked": True}
    both = {"inference": {n: {"default": cell, "padded": cell} for n in ("llama3-8b", "gemma2-9b")},
            "flop_ratio_gemma2_over_llama3": 1.2, "s_per_sample_ratio_gemma2_over_llama3": {"default": 1.2, "padded": 1.3}}
    t4 = {"cells": {}, "factors": {"attention_eager_over_sdpa": 1.1, "architecture_gemma2_sdpa_over_llama3_4bit": 2.0,
                                   "quantisation_llama3_4bit_over_8bit": 0.6, "flop_ratio": 1.2}}
    old = run("old", "2026-01-01T00:00:00", **both)
    run("partial", "2026-01-02T00:00:00", train_stage={"llama3-8b": {"mfu": 0.5, "tokens_per_s": 1.0}}, t4_path=t4)
    # a newer run of one part does not replace the comparison the docs are about...
    assert report.newest_results(tmp_path) == old
    # ...it is shown after it, with its card and commit, and the T4 section comes from it (its cells all ran)
    newer = report.newer_block(old)
    assert "### card-partial, 2026-01-02, commit partial" in newer and "| Llama3-8B | n/a |" in newer
    assert report.t4_block(old).startswith("Measured on 1 x card-partial")
    assert ("The largest factor is the rest of the architecture, at each model's batch: 2.00x. Eager softcap attention "
            "by itself is 10% slower than SDPA") in report.t4_block(old)
    assert report.newer_block(run("newest", "2026-01-03T00:00:00", **both)) == "No newer run."
    assert report.newest_results(tmp_path) == tmp_path / "newest"


def test_every_run_is_listed_with_the_spread_between_cards_of_one_name(tmp_path):
    def run(name, date, card, mfu, matmul):
        folder = tmp_path / name
        folder.mkdir()
        inf = {n: {"default": {"mfu": mfu}, "profile_ms_per_sample": {"matmul": matmul}} for n in ("llama3-8b", "gemma2-9b")}
        part = {"command": f"run {name} --stage-models gemma2-9b", "kept_from": {"command": f"run {name} --stage-models llama3-8b"}}
        head = {"date": date, "commit": name, "device": {"name": card}, "inference": inf, "parts": {"train": part}}
        (folder / "headline.json").write_text(json.dumps(head))
        return folder

    run("a", "2026-01-01", "H100", 0.80, 10.0)
    run("b", "2026-01-02", "H200", 0.90, 9.0)
    newest = run("c", "2026-01-03", "H100", 0.84, 11.0)
    text = report.runs_block(newest)
    rows = [r for r in text.splitlines() if r.startswith("| [`")]
    assert [r.split("`")[1] for r in rows] == ["c", "b", "a"]  # newest first
    assert "| 0.840 / 0.840 | 11.00 / 11.00 |" in rows[0]
    # the spread is between the two H100 runs only (the H200's 0.90 is another card)
    assert "Llama3-8B on H100 (2 runs): default-path MFU 0.800 to 0.840, matmul device time 10.00 to 11.00 ms/sample (10.0% apart)" in text
    assert "on H200" not in text
    # the command whose models a later run of the part kept comes before that run's own
    assert report.commands(json.loads((newest / "headline.json").read_text())) == [
        "run c --stage-models llama3-8b", "run c --stage-models gemma2-9b"]


def test_a_part_that_fails_is_listed_with_its_reason_and_the_command_fails(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    meta = {"command": "python -m benchmarks run", "date": "2026-01-01T00:00:00+00:00", "commit": "c", "dirty": False,
            "code_digest": "d", "device": {"name": "cpu", "count": 1}, "versions": {"torch": "x"},
            "peak_bf16_flops_measured": 1e12, "peak_bf16_flops_datasheet": None}
    doc = {"part": "train", "meta": meta, "settings": {"rows": 6, "reps": 1, "steps": 2},
           "models": {"tiny-llama3": {"failed": "stages.train exited 1: out of memory"}}}
    (out / "train.json").write_text(json.dumps(doc))
    head = headline.merge(out)
    assert head["not_run"] == [{"what": "train.tiny-llama3", "reason": "stages.train exited 1: out of memory"}]
    assert "train_stage" in head and head["train_stage"] == {}
    assert "out of memory" in (out / "MANIFEST.md").read_text()
    assert "out of memory" in report.not_run_block(out)


def test_benchmark_families_come_from_params_entries():
    """Each default model's family has its params entry, found through the entry's own tiny model
    (benchmarks.settings.family_keys), so a new family needs one params entry and its folders."""
    for full, tiny in zip(settings.MODELS, settings.TINY_MODELS):
        assert settings.family_key(full) == settings.family_key(tiny)
    assert [settings.family_key(m) for m in settings.MODELS] == ["llama3", "gemma2", "qwen2", "mistral"]

def test_a_family_without_a_params_entry_is_named(tmp_path, monkeypatch):
    import yaml
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    del raw["models"]["gemma2"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (tmp_path / "models").symlink_to(ROOT / "models")
    monkeypatch.setattr(settings, "ROOT", tmp_path)
    settings.family_keys.cache_clear()
    try:
        with pytest.raises(ValueError, match="models/gemma2-9b: family 'gemma2' has no entry in params.yaml "
                                             r"\(families with one: llama, qwen2, mistral\)"):
            settings.family_key("gemma2-9b")
    finally:
        settings.family_keys.cache_clear()


def test_only_takes_known_parts():
    proc = bench("run", "--out", "/nonexistent/x", "--only", "inference,profile")
    assert proc.returncode == 2 and "unknown part(s) ['profile']" in proc.stderr


def test_kernel_categories():
    assert inference.kernel_category("flash_fwd_kernel_sm90") == "attention"
    assert inference.kernel_category("nvjet_tst_192x192_64x4_2x1_v_bz_coopB_TNT") == "matmul"
    assert inference.kernel_category("_rms_norm_forward_kernel") == "fused_norm_rope_act"
    assert inference.kernel_category("void at::native::vectorized_elementwise_kernel<4>") == "elementwise_reduce"
    assert inference.kernel_category("something_new") == "other"


def test_render_replaces_only_block_bodies_and_names_unknown_blocks():
    text = "a\n<!-- begin: x -->\nold 1\n<!-- end: x -->\nb\n<!-- begin: y -->\n<!-- end: y -->\n"
    out = docgen.render(text, {"x": lambda root: "new", "y": lambda root: "| t |\n"}, ROOT)
    assert out == "a\n<!-- begin: x -->\nnew\n<!-- end: x -->\nb\n<!-- begin: y -->\n| t |\n<!-- end: y -->\n"
    with pytest.raises(docgen.UnknownBlockError, match="'x' has no generator"):
        docgen.render(text, {"y": lambda root: ""}, ROOT, "README.md")


def test_committed_docs_are_the_report_of_the_committed_results():
    proc = forked.run("-m", "benchmarks", "report", "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_docs_check_fails_on_a_changed_number(tmp_path):
    folder = report.newest_results()
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    head = json.loads((copy / "headline.json").read_text())
    name = next(iter(head["inference"]))
    head["inference"][name]["default"]["s_per_sample"] *= 1.5
    (copy / "headline.json").write_text(json.dumps(head))
    doc = (ROOT / "docs" / "performance.md").read_text()
    assert docgen.render(doc, report.all_blocks(copy), ROOT) != doc


def test_a_cell_passes_only_within_the_plain_models_own_error():
    ref = np.array([[1.0, -2.0, 0.5]])
    plain = inference.errors(ref + 0.02, ref)  # the dtype's own rounding: 1% of the largest logit
    assert inference.judged(inference.errors(ref + 0.03, ref), plain)["within_tolerance"]
    assert not inference.judged(inference.errors(ref + 0.2, ref), plain)["within_tolerance"]  # a wrong function
    assert not inference.judged(inference.errors(ref * np.nan, ref), plain)["within_tolerance"]


def test_a_part_run_again_keeps_the_models_it_does_not_rerun(tmp_path):
    """One folder filled by several commands (`--stage-models gemma2-9b` after `--stage-models
    llama3-8b`): an earlier finished run of the part on the same card, code and settings keeps its
    other models; one from other code, other settings, a run cut short, or a failed model does not."""
    from benchmarks.headline import kept_models

    meta = {"command": "python -m benchmarks run --only train", "date": "d", "code_digest": "c",
            "device": {"name": "H100"}}
    old = {"part": "train", "meta": meta, "settings": {"rows": 8, "reps": 2, "steps": 200}, "seconds": 10.0,
           "models": {"llama3-8b": {"mfu": 0.5}, "qwen2-7b": {"failed": "x"}}}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(old))
    new = {"meta": {**meta, "command": "other"}, "settings": dict(old["settings"])}
    kept = kept_models(path, new, ["gemma2-9b"])
    assert kept["models"] == {"llama3-8b": {"mfu": 0.5}} and kept["command"] == meta["command"]
    assert kept_models(path, new, ["llama3-8b"]) is None  # rerun: nothing else to keep
    assert kept_models(path, {**new, "meta": {**meta, "code_digest": "other"}}, ["gemma2-9b"]) is None
    assert kept_models(path, {**new, "settings": {**old["settings"], "steps": 64}}, ["gemma2-9b"]) is None
    path.write_text(json.dumps({**old, "seconds": None}))
    assert kept_models(path, new, ["gemma2-9b"]) is None
    assert kept_models(tmp_path / "absent.json", new, ["gemma2-9b"]) is None
