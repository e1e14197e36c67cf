import json

from prefbench.compare import experiments, markdown, scatter_spec
from tests.conftest import ROOT


def real_exp_show():
    # `dvc exp show --json` as DVC 3.67 wrote it on the GPU run (benchmarks/results)
    return json.loads((ROOT / "benchmarks" / "results" / "repro-exp-show.json").read_text())


def test_flattens_baseline_and_experiments():
    exps = experiments(real_exp_show())
    names = {e["experiment"]: e for e in exps}
    assert set(names) == {"main", "gpu-llama3", "gpu-gemma2", "gpu-gemma2-4bit"}
    assert names["gpu-gemma2-4bit"]["quantization"] == "4bit"
    assert names["gpu-llama3"]["params_total"] == 7_504_936_960


def test_markdown_sorted_by_log_loss_and_scatter_has_one_point_each():
    exps = experiments(real_exp_show())
    md = markdown(exps).splitlines()
    assert md[0].startswith("| experiment | model | log_loss")
    losses = [float(line.split("|")[3]) for line in md[2:]]
    assert losses == sorted(losses) and len(losses) == 4
    spec = scatter_spec(exps)
    points = spec["data"]["values"]
    assert len(points) == 4 and {p["model"] for p in points} == {"llama3", "gemma2"}
    assert spec["layer"][0]["encoding"]["x"]["field"] == "seconds_per_sample"
