"""The params a benchmark runs the pipeline with: the repo's own params.yaml, the model switched to
a full-size architecture (random-init weights: the timing is real, the log-loss is not), and the
settings for an 8-9B model on one GPU that the README gives. Everything else (dtype, attention,
kernels, packing, token_budget, warm-up) stays `auto` / the default, so what is measured is what
`dvc repro` runs with those settings on the card at hand.
"""

from __future__ import annotations

import copy
import functools
import json

import yaml
from transformers import AutoConfig

from benchmarks.card import ROOT
from prefbench.config import Params, parse_params

# Folders under models/: full-size configs and tokenizers, no weights (GPU), and the tiny models of
# the same families (CPU smoke runs), in the same order.
MODELS = ("llama3-8b", "gemma2-9b", "qwen2-7b", "mistral-7b")
TINY_MODELS = ("tiny-llama3", "tiny-gemma2", "tiny-qwen2", "tiny-mistral")
# The evaluate and train parts' default: the first two families. A full-size stage run takes minutes
# of GPU time per family; Qwen2 and Mistral go through the stages with `--stage-models`.
TRAIN_FAMILIES = 2


@functools.cache
def family_keys() -> dict[str, str]:
    """Model family (config.json's model_type) -> its entry in params.yaml: each LLM entry whose
    `pretrained` is a folder of the repo, by that folder's config (the first entry of a family wins).
    One params entry per family is all a new family needs here."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    keys = {}
    for key, entry in raw["models"].items():
        config = ROOT / str(entry.get("pretrained", "")) / "config.json"
        if "kind" not in entry and config.is_file():  # `kind`: the tfidf baseline, no config
            keys.setdefault(json.loads(config.read_text())["model_type"], key)
    return keys

# One GPU, 8-9B models (README, "On a GPU"): prompt + both responses in 1024 tokens; training in
# packed batches of 8192 tokens without gradient checkpointing (fits 80 GB for both models);
# packed inference forwards of 65536 tokens (fewer, longer matmuls than params.yaml's 16384, which
# suits smaller cards; an 8-9B model's activations for 65536 tokens fit 80 GB);
# learning rate for 8-9B LoRA (the tiny defaults' 3e-3 is for the tiny models).
GPU_MODEL = {"max_length": 1024, "train_token_budget": 8192, "gradient_checkpointing": False, "eval_batch_size": 16,
             "token_budget": 65536}
GPU_TRAIN = {"learning_rate": 1e-4, "epochs": 1, "checkpoint_every": 0, "devices": 1}
# A CPU smoke run of the same code with the tiny models (what the tests run).
CPU_MODEL = {"max_length": 128, "train_token_budget": 512, "gradient_checkpointing": False, "eval_batch_size": 4}
CPU_TRAIN = {"learning_rate": 1e-4, "epochs": 1, "checkpoint_every": 0, "devices": 1}


def family_key(name: str) -> str:
    """params.yaml's entry for the model folder `name` (models/<name>), by its config's family."""
    model_type = AutoConfig.from_pretrained(ROOT / "models" / name).model_type
    keys = family_keys()
    if model_type not in keys:
        raise ValueError(f"models/{name}: family {model_type!r} has no entry in params.yaml (families with one: "
                         f"{', '.join(keys)})")
    return keys[model_type]


def default_models(on_gpu: bool) -> tuple[str, ...]:
    return MODELS if on_gpu else TINY_MODELS


def raw_params(name: str, on_gpu: bool, **model_overrides) -> dict:
    """params.yaml as a dict with `model` and its entry set for models/<name> and the settings above."""
    raw = copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text()))
    key = family_key(name)
    raw["model"] = key
    raw["models"][key].update({"pretrained": str(ROOT / "models" / name), **(GPU_MODEL if on_gpu else CPU_MODEL),
                               **model_overrides})
    raw["train"].update(GPU_TRAIN if on_gpu else CPU_TRAIN)
    for stage in ("evaluate", "predict"):
        raw[stage]["devices"] = 1
    return raw


def bench_params(name: str, on_gpu: bool, **model_overrides) -> Params:
    """The typed params of `raw_params` (checked as every stage checks them)."""
    return parse_params(raw_params(name, on_gpu, **model_overrides))
