import copy

import pytest
import yaml

from prefbench.config import ParamsError, load_params, parse_params
from tests.conftest import ROOT


@pytest.fixture()
def raw():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_shipped_params_load():
    params = load_params(ROOT / "params.yaml")
    assert params.model in params.models
    assert params.selected is params.models[params.model]
    assert set(params.models) == {"gemma2", "llama3", "qwen2", "mistral", "tfidf"}


def test_every_shipped_llm_entry_is_a_family_prefbench_knows():
    """Each LLM entry's tiny model is of a family in prefbench.families (one entry per family),
    and the entries share their keys: a family is added by one entry laid out like llama3's."""
    import json

    from prefbench.config import ModelParams
    from prefbench.families import family_of
    params = load_params(ROOT / "params.yaml")
    llms = {k: m for k, m in params.models.items() if isinstance(m, ModelParams)}
    types = [json.loads((ROOT / m.pretrained / "config.json").read_text())["model_type"] for m in llms.values()]
    assert all(family_of(t).known for t in types) and sorted(types) == ["gemma2", "llama", "mistral", "qwen2"]


@pytest.mark.parametrize("path,value,message", [
    (("models", "gemma2", "max_length"), "long", "models.gemma2.max_length: expected int"),
    (("models", "llama3", "max_length"), 0, "models.llama3.max_length must be > 0"),
    (("models", "llama3", "eval_batch_size"), -4, "models.llama3.eval_batch_size must be > 0"),
    (("models", "llama3", "quantization"), "int4", "models.llama3.quantization: 'int4' is not one of"),
    (("data", "val_fraction"), 1.0, "data.val_fraction must be in (0, 1)"),
    (("data", "val_fraction"), 0, "data.val_fraction must be in (0, 1)"),
    (("train", "learning_rate"), "fast", "train.learning_rate: expected float"),
    (("models", "gemma2", "gradient_checkpointing"), "yes", "models.gemma2.gradient_checkpointing: expected bool"),
    (("models", "llama3", "train_token_budget"), -1, "models.llama3.train_token_budget must be >= 0"),
    (("models", "gemma2", "train_token_budget"), 4096.5, "models.gemma2.train_token_budget: expected int"),
    (("models", "gemma2", "train_token_budget"), "16k", "models.gemma2.train_token_budget: expected int"),
    (("models", "llama3", "train_token_budget"), True, "models.llama3.train_token_budget: expected int"),
])
def test_bad_values_name_the_key(raw, path, value, message):
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ParamsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_params(raw)


def test_unknown_and_missing_keys_are_named(raw):
    bad = copy.deepcopy(raw)
    bad["models"]["llama3"]["lora_rank"] = 4
    with pytest.raises(ParamsError, match=r"unknown params key: models\.llama3\.lora_rank"):
        parse_params(bad)
    bad = copy.deepcopy(raw)
    del bad["train"]["epochs"]
    with pytest.raises(ParamsError, match=r"missing params key: train\.epochs"):
        parse_params(bad)
    bad = copy.deepcopy(raw)
    bad["evalute"] = {}
    with pytest.raises(ParamsError, match="unknown params key: evalute"):
        parse_params(bad)


def test_unknown_model_lists_valid_ones(raw):
    raw["model"] = "phi3"
    with pytest.raises(ParamsError, match="unknown model 'phi3'; valid: gemma2, llama3, mistral, qwen2"):
        parse_params(raw)


def test_train_token_budget_is_read_per_model(raw):
    """0 (the shipped value: batches of train_batch_size rows) and a budget are both valid."""
    assert parse_params(raw).models["llama3"].train_token_budget == 0
    raw["models"]["gemma2"]["train_token_budget"] = 16384
    assert parse_params(raw).models["gemma2"].train_token_budget == 16384


def test_float_written_as_yaml_string_is_accepted(raw):
    raw["train"]["learning_rate"] = "2e-4"  # YAML 1.1 reads 2e-4 (no dot) as a string
    assert parse_params(raw).train.learning_rate == pytest.approx(2e-4)
