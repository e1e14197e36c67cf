"""Typed params: one dataclass per section of params.yaml.

Every stage reads params.yaml through `load_params`, which fails fast on a missing or unknown
key and on a value of the wrong type, naming the key (`models.gemma2.max_length`), so a typo in
`dvc exp run -S ...` is caught before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ParamsError(ValueError):
    """A params.yaml problem; the message names the key."""


@dataclass
class SampleParams:
    rows: int  # rows of generated competition-format train.csv (the embedded default)
    test_rows: int  # rows of a generated test.csv (no labels, no model names) for `predict`
    seed: int

    def validate(self, key: str) -> None:
        _positive(self.rows, f"{key}.rows")
        _positive(self.test_rows, f"{key}.test_rows")


@dataclass
class DataParams:
    train_csv: str  # competition-format CSV; the generated sample by default
    val_fraction: float  # share of rows (whole prompt groups) held out for evaluation
    seed: int
    max_rows: int  # 0 = all rows; >0 = the first N rows of the CSV (quick runs on real data)
    strict: bool  # true: fail on the first bad row (file, row id, column); false: drop and count it

    def validate(self, key: str) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ParamsError(f"{key}.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.max_rows < 0:
            raise ParamsError(f"{key}.max_rows must be >= 0 (0 = all rows), got {self.max_rows}")


@dataclass
class ModelParams:
    pretrained: str  # local folder (weights or config only) or a hub id
    dtype: str  # auto | float32 | bfloat16 | float16
    attn_implementation: str  # auto | eager | sdpa | flex_attention | flash_attention_2 | flash_attention_4
    quantization: str  # none | 4bit (NF4 base via bitsandbytes, CUDA only)
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_target_modules: list[str]
    max_length: int  # tokens per row: prompt + response A + response B, markers included
    train_batch_size: int
    eval_batch_size: int
    gradient_checkpointing: bool
    compile: bool  # torch.compile (LoRA merged) for evaluate/predict; for long runs only (params.yaml)
    kernels: str  # auto | liger | none: Liger's fused RMSNorm, RoPE, SwiGLU/GeGLU (auto = liger on CUDA if installed)
    packing: str  # auto | packed | padded: evaluate/predict rows packed into token-budget forwards (prefbench.packing)
    token_budget: int  # tokens per packed forward
    name: str = field(default="<model>", init=False)  # its key in `models`, set by parse_params, for messages

    def validate(self, key: str) -> None:
        _choice(self.dtype, ("auto", "float64", "float32", "bfloat16", "float16"), f"{key}.dtype")
        _choice(
            self.attn_implementation,
            ("auto", "eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_4"),
            f"{key}.attn_implementation",
        )
        _choice(self.quantization, ("none", "4bit"), f"{key}.quantization")
        _choice(self.kernels, ("auto", "liger", "none"), f"{key}.kernels")
        _choice(self.packing, ("auto", "packed", "padded"), f"{key}.packing")
        for name in ("lora_r", "lora_alpha", "max_length", "train_batch_size", "eval_batch_size", "token_budget"):
            _positive(getattr(self, name), f"{key}.{name}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ParamsError(f"{key}.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.lora_target_modules:
            raise ParamsError(f"{key}.lora_target_modules must name at least one module")
        if self.max_length < 16:
            raise ParamsError(f"{key}.max_length must be >= 16 tokens, got {self.max_length}")


@dataclass
class TfidfParams:
    """A `models` entry with `kind: tfidf`: the scikit-learn baseline (prefbench.tfidf), not an LLM.

    Word and character TF-IDF of the prompt, each response and their difference, plus length
    features, into a multinomial logistic regression."""
    kind: str  # tfidf (an entry without `kind` is an LLM: ModelParams)
    word_ngram_max: int  # word n-grams 1..N
    char_ngram_max: int  # character n-grams (within words) 2..N
    max_features: int  # per vectoriser (word, char): the most frequent n-grams of the training texts
    min_df: int  # an n-gram must occur in this many training texts
    C: float  # inverse L2 strength of the logistic regression
    max_iter: int  # lbfgs iterations
    eval_batch_size: int  # rows per predict call (evaluate and predict time batches as for the LLMs)

    def validate(self, key: str) -> None:
        _choice(self.kind, ("tfidf",), f"{key}.kind")
        for name in ("word_ngram_max", "max_features", "min_df", "C", "max_iter", "eval_batch_size"):
            _positive(getattr(self, name), f"{key}.{name}")
        if self.char_ngram_max < 2:
            raise ParamsError(f"{key}.char_ngram_max must be >= 2, got {self.char_ngram_max}")


def by_kind(cfg, llm, tfidf):
    """The one of `llm` and `tfidf` for the selected model's kind: how a stage runs either kind
    through the same code path (the stage's outputs, metrics keys and files are the same)."""
    return tfidf if isinstance(cfg, TfidfParams) else llm


@dataclass
class TokenizeParams:
    prompt_share: float  # at most this share of the token budget goes to the prompt...
    # ...unless the responses are shorter than their share: unused budget is handed on.

    def validate(self, key: str) -> None:
        if not 0.0 < self.prompt_share < 1.0:
            raise ParamsError(f"{key}.prompt_share must be in (0, 1), got {self.prompt_share}")


@dataclass
class TrainParams:
    epochs: float
    learning_rate: float
    warmup_ratio: float  # share of optimizer steps spent warming up linearly from 0
    weight_decay: float
    grad_accum_steps: int
    max_grad_norm: float
    seed: int
    log_every: int  # optimizer steps between dvclive points
    checkpoint_every: int  # optimizer steps between resumable checkpoints; 0 = none
    devices: int  # GPUs for DDP training (accelerate launch, one process each); 0 = all visible

    def validate(self, key: str) -> None:
        for name in ("epochs", "learning_rate", "grad_accum_steps", "log_every"):
            _positive(getattr(self, name), f"{key}.{name}")
        _devices(self.devices, f"{key}.devices")
        if self.checkpoint_every < 0:
            raise ParamsError(f"{key}.checkpoint_every must be >= 0 (0 = no checkpoints), got {self.checkpoint_every}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ParamsError(f"{key}.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class EvaluateParams:
    warmup_batches: int  # batches run before the timer starts (kernel selection, caches)
    # true: also one untimed batch of every distinct padded shape first (cuDNN plans, JIT kernels and
    # torch.compile graphs are built per shape; on a GPU, pad to 64 bounds them: <= 2 x 16 at 1024)
    warmup_shapes: bool
    devices: int  # GPUs for evaluate and predict, one model copy each; 0 = all visible

    def validate(self, key: str) -> None:
        if self.warmup_batches < 0:
            raise ParamsError(f"{key}.warmup_batches must be >= 0, got {self.warmup_batches}")
        _devices(self.devices, f"{key}.devices")


@dataclass
class PredictParams:
    test_csv: str  # competition-format test.csv (id, prompt, response_a, response_b)
    swap_tta: bool  # also predict with responses A and B swapped and average: 2x the time
    kaggle_rows: int  # rows of the hidden test set, for the projected run time
    kaggle_hours: float  # the competition's run-time limit
    warmup_batches: int  # batches run before the timer starts, as evaluate.warmup_batches
    warmup_shapes: bool  # one untimed batch of every padded shape first, as evaluate.warmup_shapes
    devices: int  # GPUs, one model copy each, as evaluate.devices; 0 = all visible

    def validate(self, key: str) -> None:
        if self.warmup_batches < 0:
            raise ParamsError(f"{key}.warmup_batches must be >= 0, got {self.warmup_batches}")
        _devices(self.devices, f"{key}.devices")
        _positive(self.kaggle_rows, f"{key}.kaggle_rows")
        _positive(self.kaggle_hours, f"{key}.kaggle_hours")


@dataclass
class Params:
    model: str  # key into `models`
    models: dict[str, ModelParams | TfidfParams]
    sample: SampleParams
    data: DataParams
    tokenize: TokenizeParams
    train: TrainParams
    evaluate: EvaluateParams
    predict: PredictParams
    selected: ModelParams | TfidfParams = field(init=False)

    def __post_init__(self) -> None:
        if self.model not in self.models:
            valid = ", ".join(sorted(self.models))
            raise ParamsError(f"model: unknown model {self.model!r}; valid: {valid}")
        self.selected = self.models[self.model]


SECTIONS = {
    "sample": SampleParams,
    "data": DataParams,
    "tokenize": TokenizeParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "predict": PredictParams,
}


def load_params(path: str | Path = "params.yaml") -> Params:
    raw = yaml.safe_load(Path(path).read_text())
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections")
    return parse_params(raw)


def parse_params(raw: dict) -> Params:
    expected = {"model", "models", *SECTIONS}
    _check_keys(raw, expected, "")
    if not isinstance(raw["models"], dict) or not raw["models"]:
        raise ParamsError("models: expected a mapping of model name -> settings")
    models = {name: build_model(cfg, f"models.{name}") for name, cfg in raw["models"].items()}
    for name, cfg in models.items():
        cfg.name = name  # for messages that name the model
    sections = {name: build(cls, raw[name], name) for name, cls in SECTIONS.items()}
    return Params(model=_coerce(raw["model"], str, "model"), models=models, **sections)


def build_model(raw, key: str) -> ModelParams | TfidfParams:
    """An LLM entry (ModelParams), or the scikit-learn baseline when it says `kind: tfidf`."""
    if isinstance(raw, dict) and "kind" in raw:
        return build(TfidfParams, raw, key)
    return build(ModelParams, raw, key)


def build(cls, raw, key: str):
    """Build dataclass `cls` from mapping `raw`, naming `key.field` in every error."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{key}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    _check_keys(raw, set(fields), key)
    hints = typing.get_type_hints(cls)
    obj = cls(**{name: _coerce(raw[name], hints[name], f"{key}.{name}") for name in fields})
    obj.validate(key)
    return obj


def _check_keys(raw: dict, expected: set[str], key: str) -> None:
    prefix = f"{key}." if key else ""
    missing = sorted(expected - set(raw))
    unknown = sorted(set(raw) - expected)
    if missing:
        raise ParamsError(f"missing params key: {', '.join(prefix + k for k in missing)}")
    if unknown:
        valid = ", ".join(sorted(expected))
        raise ParamsError(f"unknown params key: {', '.join(prefix + k for k in unknown)} (valid: {valid})")


def _coerce(value, typ, key: str):
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        # YAML reads `2e-4` as a string (YAML 1.1): accept numeric strings for floats.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
    elif typing.get_origin(typ) is list:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    else:  # pragma: no cover - a new field type needs a branch here
        raise TypeError(f"{key}: unsupported field type {typ}")
    name = getattr(typ, "__name__", str(typ))
    raise ParamsError(f"{key}: expected {name}, got {value!r}")


def _positive(value, key: str) -> None:
    if value <= 0:
        raise ParamsError(f"{key} must be > 0, got {value}")


def _devices(value: int, key: str) -> None:
    if value < 0:
        raise ParamsError(f"{key} must be >= 0 (0 = all visible GPUs), got {value}")


def _choice(value: str, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        raise ParamsError(f"{key}: {value!r} is not one of {', '.join(choices)}")
