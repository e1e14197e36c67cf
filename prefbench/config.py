"""Typed params: one pydantic dataclass per section of params.yaml.

Every stage reads params.yaml through `load_params`, which fails fast on a missing or unknown
key and on a value of the wrong type, naming the key (`models.gemma2.max_length`), so a typo in
`dvc exp run -S ...` is caught before any model is loaded. pydantic checks the types (strict:
no "yes" for a bool, no 4.5 for an int) and each field's range; `build` words its errors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import AfterValidator, BeforeValidator, ConfigDict, ValidationError
from pydantic.dataclasses import dataclass as _dataclass


class ParamsError(ValueError):
    """A params.yaml problem; the message names the key."""


def _check(ok, says: str) -> AfterValidator:
    """A range or choice check; `says` (the value at {}) is appended to the key: " must ..." or ": ..."."""
    def check(value):
        if not ok(value):
            raise ValueError(says.format(value))
        return value
    return AfterValidator(check)


def _at_least(low, note: str = "") -> AfterValidator:
    return _check(lambda v: v >= low, f" must be >= {low}{note}, got {{}}")


def _choice(*choices: str):
    return Annotated[str, _check(lambda v: v in choices, f": {{!r}} is not one of {', '.join(choices)}")]


def _yaml_float(value):
    # YAML reads `2e-4` as a string (YAML 1.1): accept numeric strings for floats.
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value  # pydantic then says: expected float


Float = Annotated[float, BeforeValidator(_yaml_float)]
Positive = _check(lambda v: v > 0, " must be > 0, got {}")
PosInt, PosFloat = Annotated[int, Positive], Annotated[Float, Positive]
Share = Annotated[Float, _check(lambda v: 0.0 < v < 1.0, " must be in (0, 1), got {}")]
Ratio = Annotated[Float, _check(lambda v: 0.0 <= v < 1.0, " must be in [0, 1), got {}")]
Devices = Annotated[int, _at_least(0, " (0 = all visible GPUs)")]
# strict: no "yes" for a bool, no 4.5 for an int; forbid: an unknown key is an error, not dropped
_section = _dataclass(config=ConfigDict(strict=True, extra="forbid"))


@_section
class SampleParams:
    rows: PosInt  # rows of generated competition-format train.csv (the embedded default)
    test_rows: PosInt  # rows of a generated test.csv (no labels, no model names) for `predict`
    seed: int


@_section
class DataParams:
    train_csv: str  # competition-format CSV; the generated sample by default
    val_fraction: Share  # share of rows (whole prompt groups) held out for evaluation
    seed: int
    max_rows: Annotated[int, _at_least(0, " (0 = all rows)")]  # 0 = all rows; >0 = the first N rows of the CSV
    strict: bool  # true: fail on the first bad row (file, row id, column); false: drop and count it


@_section
class ModelParams:
    pretrained: str  # local folder (weights or config only) or a hub id
    dtype: _choice("auto", "float64", "float32", "bfloat16", "float16")
    attn_implementation: _choice("auto", "eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_4")
    # 4bit / 8bit: NF4 / LLM.int8 base via bitsandbytes (CUDA only); fp8: evaluate and predict run the
    # merged model's linear layers in FP8 (torchao; GPUs with FP8 matmuls), training stays bf16
    quantization: _choice("none", "4bit", "8bit", "fp8")
    lora_r: PosInt
    lora_alpha: PosInt
    lora_dropout: Ratio
    lora_target_modules: Annotated[list[str], _check(bool, " must name at least one module")]
    # tokens per row: prompt + response A + response B, markers included
    max_length: Annotated[int, Positive, _at_least(16, " tokens")]
    train_batch_size: PosInt
    # tokens per global training batch (rows taken while they fit); 0 = batches of train_batch_size rows
    train_token_budget: Annotated[int, _at_least(0, " (0 = batches of train_batch_size rows)")]
    eval_batch_size: PosInt
    gradient_checkpointing: bool
    compile: bool  # torch.compile (LoRA merged) for evaluate/predict; for long runs only (params.yaml)
    # Liger's fused RMSNorm, RoPE, SwiGLU/GeGLU (auto = liger on CUDA if installed)
    kernels: _choice("auto", "liger", "none")
    # rows packed back to back, no padding (prefbench.packing): evaluate/predict forwards, training batches
    packing: _choice("auto", "packed", "padded")
    token_budget: PosInt  # tokens per packed forward
    name: str = field(default="<model>", init=False)  # its key in `models`, set by parse_params, for messages

    @property
    def quantized_base(self) -> bool:
        """The base is stored quantised by bitsandbytes (4bit, 8bit): peft's k-bit preparation for
        training, and LoRA cannot be merged into it. fp8 quantises only after the merge."""
        return self.quantization in ("4bit", "8bit")


@_section
class TfidfParams:
    """A `models` entry with `kind: tfidf`: the scikit-learn baseline (prefbench.tfidf), not an LLM.

    Word and character TF-IDF of the prompt, each response and their difference, plus length
    features, into a multinomial logistic regression."""
    kind: _choice("tfidf")  # an entry without `kind` is an LLM: ModelParams
    word_ngram_max: PosInt  # word n-grams 1..N
    char_ngram_max: Annotated[int, _at_least(2)]  # character n-grams (within words) 2..N
    max_features: PosInt  # per vectoriser (word, char): the most frequent n-grams of the training texts
    min_df: PosInt  # an n-gram must occur in this many training texts
    C: PosFloat  # inverse L2 strength of the logistic regression
    max_iter: PosInt  # lbfgs iterations
    eval_batch_size: PosInt  # rows per predict call (evaluate and predict time batches as for the LLMs)


def by_kind(cfg, llm, tfidf):
    """The one of `llm` and `tfidf` for the selected model's kind: how a stage runs either kind
    through the same code path (the stage's outputs, metrics keys and files are the same)."""
    return tfidf if isinstance(cfg, TfidfParams) else llm


@_section
class TokenizeParams:
    prompt_share: Share  # at most this share of the token budget goes to the prompt...
    # ...unless the responses are shorter than their share: unused budget is handed on.


@_section
class TrainParams:
    epochs: PosFloat
    learning_rate: PosFloat
    warmup_ratio: Ratio  # share of optimizer steps spent warming up linearly from 0
    weight_decay: Float
    grad_accum_steps: PosInt
    max_grad_norm: Float
    seed: int
    log_every: PosInt  # optimizer steps between dvclive points
    checkpoint_every: Annotated[int, _at_least(0, " (0 = no checkpoints)")]  # optimizer steps between checkpoints
    devices: Devices  # GPUs for DDP training (accelerate launch, one process each); 0 = all visible


@_section
class EvaluateParams:
    warmup_batches: Annotated[int, _at_least(0)]  # batches run before the timer starts (kernel selection, caches)
    # true: also one untimed batch of every distinct padded shape first (cuDNN plans, JIT kernels and
    # torch.compile graphs are built per shape; on a GPU, pad to 64 bounds them: <= 2 x 16 at 1024)
    warmup_shapes: bool
    devices: Devices  # GPUs for evaluate and predict, one model copy each; 0 = all visible


@_section
class PredictParams:
    test_csv: str  # competition-format test.csv (id, prompt, response_a, response_b)
    swap_tta: bool  # also predict with responses A and B swapped and average: 2x the time
    kaggle_rows: PosInt  # rows of the hidden test set, for the projected run time
    kaggle_hours: PosFloat  # the competition's run-time limit
    warmup_batches: Annotated[int, _at_least(0)]  # batches run before the timer starts, as evaluate.warmup_batches
    warmup_shapes: bool  # one untimed batch of every padded shape first, as evaluate.warmup_shapes
    devices: Devices  # GPUs, one model copy each, as evaluate.devices; 0 = all visible


@dataclasses.dataclass
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
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as e:  # one line: where and what, as PyYAML words it over several
        raise ParamsError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections")
    return parse_params(raw)


def parse_params(raw: dict) -> Params:
    expected = {"model", "models", *SECTIONS}
    _check_keys(set(raw) - expected, expected - set(raw), expected, "")
    if not isinstance(raw["models"], dict) or not raw["models"]:
        raise ParamsError("models: expected a mapping of model name -> settings")
    models = {name: build_model(cfg, f"models.{name}") for name, cfg in raw["models"].items()}
    for name, cfg in models.items():
        cfg.name = name  # for messages that name the model
    sections = {name: build(cls, raw[name], name) for name, cls in SECTIONS.items()}
    if not isinstance(raw["model"], str):
        raise ParamsError(f"model: expected str, got {raw['model']!r}")
    return Params(model=raw["model"], models=models, **sections)


def build_model(raw, key: str) -> ModelParams | TfidfParams:
    """An LLM entry (ModelParams), or the scikit-learn baseline when it says `kind: tfidf`."""
    if isinstance(raw, dict) and "kind" in raw:
        return build(TfidfParams, raw, key)
    return build(ModelParams, raw, key)


TYPES = {"int_type": "int", "float_type": "float", "bool_type": "bool", "string_type": "str", "list_type": "list"}


def build(cls, raw, key: str):
    """Build params dataclass `cls` from mapping `raw`, naming `key.field` in every error."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{key}: expected a mapping, got {type(raw).__name__}")
    try:
        return cls(**{str(k): v for k, v in raw.items()})
    except ValidationError as e:
        errors = [(".".join(map(str, err["loc"])), err) for err in e.errors()]
    missing = {at for at, err in errors if err["type"] == "missing"}
    unknown = {at for at, err in errors if err["type"] == "unexpected_keyword_argument"}
    _check_keys(unknown, missing, {f.name for f in dataclasses.fields(cls) if f.init}, key)
    at, err = errors[0]
    if err["type"] == "value_error":  # a range or choice from _check
        raise ParamsError(f"{key}.{at}{err['ctx']['error']}")
    raise ParamsError(f"{key}.{at}: expected {TYPES.get(err['type'], err['msg'])}, got {err['input']!r}")


def _check_keys(unknown: set[str], missing: set[str], valid: set[str], key: str) -> None:
    prefix = f"{key}." if key else ""
    if missing:
        raise ParamsError(f"missing params key: {', '.join(prefix + k for k in sorted(missing))}")
    if unknown:
        unknown = ", ".join(prefix + k for k in sorted(unknown))
        raise ParamsError(f"unknown params key: {unknown} (valid: {', '.join(sorted(valid))})")
