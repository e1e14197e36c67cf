"""The scikit-learn baseline (`model: tfidf`): TF-IDF and length features, logistic regression.

The features that helped in the competition: word and character n-gram TF-IDF of the prompt, of
each response and of their difference (A - B), and per response its length in characters,
words, lines and turns plus markdown structure (list items, headers, code blocks, bold), with
the A - B differences and log ratios. A multinomial logistic regression maps them to the three
classes. It runs through the same stages as the LLMs, with the same outputs and metrics keys:

- tokenize: fits the vectorisers on the training texts; the cache holds the feature matrices
  (CSR arrays in safetensors) and the fitted featuriser (vocabularies in JSON, idf and scaling
  in safetensors);
- train: fits the classifier; the "adapter" folder holds the featuriser and the coefficients;
- evaluate / predict: `Runner`, which prefbench.infer.run_inference runs as it runs the LLMs:
  the classifier timed over batches of rows as the LLM loop is timed (features computed
  beforehand, as token ids are; warm-up batches untimed).

Nothing here is pickled: a fitted vectoriser is rebuilt from its vocabulary and idf weights.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from safetensors.numpy import load_file
from safetensors.numpy import save_file as _save_file
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from prefbench.config import Params, TfidfParams
from prefbench.data import LABEL_NAMES
from prefbench.metrics import log_loss, peak_memory_gb, softmax
from prefbench.tokenize import join_turns

DTYPE = np.float32  # feature matrices: half the memory of float64
PARTS = ("prompt", "response_a", "response_b")
# Markdown structure counted per response (judges favour formatted answers).
PATTERNS = {"list_items": re.compile(r"^\s*(?:[-*+]|\d+[.)])\s", re.M), "headers": re.compile(r"^#{1,6}\s", re.M),
            "code_blocks": re.compile(r"```"), "bold": re.compile(r"\*\*[^*]+\*\*")}
WORDS = re.compile(r"\w+")
FEATURISER_JSON, FEATURISER_ST, CLASSIFIER_ST = "featuriser.json", "featuriser.safetensors", "classifier.safetensors"


def save_file(arrays: dict[str, np.ndarray], path: str, metadata: dict | None = None) -> None:
    """safetensors writes an array's buffer as if it were C-ordered: lbfgs's coef_ is Fortran-ordered."""
    _save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, path, metadata=metadata)


def text_stats(turns: list[str]) -> list[float]:
    """chars, words, lines, turns, and the markdown counts of one part (all turns joined)."""
    text = join_turns(turns)
    return [len(text), len(WORDS.findall(text)), text.count("\n") + 1, len(turns),
            *(len(p.findall(text)) for p in PATTERNS.values())]


STAT_NAMES = ("chars", "words", "lines", "turns", *PATTERNS)


def dense_features(df: pd.DataFrame, swap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Length features and the word count of each row (prompt + both responses: the "tokens" of
    tokens_per_second). swap=True exchanges responses A and B (swap test-time augmentation)."""
    a_col, b_col = ("response_b", "response_a") if swap else ("response_a", "response_b")
    p = np.array([text_stats(t) for t in df["prompt"]], dtype=np.float64)
    a = np.array([text_stats(t) for t in df[a_col]], dtype=np.float64)
    b = np.array([text_stats(t) for t in df[b_col]], dtype=np.float64)
    la, lb = np.log1p(a), np.log1p(b)
    feats = np.hstack([np.log1p(p[:, :4]), la, lb, la - lb,  # log sizes, and log ratios A/B
                       (a - b) / (a + b + 1)])  # normalised differences in [-1, 1]
    return feats, p[:, 1] + a[:, 1] + b[:, 1]


class Featuriser:
    """Word and char TF-IDF (fitted on the training texts of all three parts) of prompt, A, B and
    A - B, next to the standardised length features; `transform` gives one CSR row per row."""

    def __init__(self, cfg: TfidfParams, vocabularies: dict | None = None):
        self.cfg = cfg
        kw = {"sublinear_tf": True, "min_df": cfg.min_df, "max_features": cfg.max_features, "dtype": DTYPE}
        self.vectorisers = {
            "word": TfidfVectorizer(analyzer="word", ngram_range=(1, cfg.word_ngram_max), **kw),
            "char": TfidfVectorizer(analyzer="char_wb", ngram_range=(2, cfg.char_ngram_max), **kw),
        }
        if vocabularies is not None:  # rebuilt from a saved one: the vocabulary fixes the columns
            for name, vec in self.vectorisers.items():
                vec.set_params(vocabulary=vocabularies[name], min_df=1, max_features=None)
        self.mean = self.std = None

    def fit(self, df: pd.DataFrame) -> Featuriser:
        texts = [join_turns(t) for part in PARTS for t in df[part]]
        for vec in self.vectorisers.values():
            vec.fit(texts)
        dense, _ = dense_features(df)
        self.mean, self.std = dense.mean(axis=0), dense.std(axis=0) + 1e-6  # + eps: constant columns
        return self

    def transform(self, df: pd.DataFrame, swap: bool = False) -> tuple[sp.csr_matrix, np.ndarray]:
        """(features, words per row); swap=True: responses A and B exchanged."""
        a_col, b_col = ("response_b", "response_a") if swap else ("response_a", "response_b")
        blocks = {}
        for part, col in (("prompt", "prompt"), ("a", a_col), ("b", b_col)):
            texts = [join_turns(t) for t in df[col]]
            blocks[part] = sp.hstack([vec.transform(texts) for vec in self.vectorisers.values()], format="csr")
        dense, words = dense_features(df, swap)
        dense = ((dense - self.mean) / self.std).astype(DTYPE)
        x = sp.hstack([blocks["prompt"], blocks["a"], blocks["b"], blocks["a"] - blocks["b"],
                       sp.csr_matrix(dense)], format="csr", dtype=DTYPE)
        return x, words

    def save(self, folder: Path) -> None:
        vocab = {name: sorted(vec.vocabulary_, key=vec.vocabulary_.get) for name, vec in self.vectorisers.items()}
        (folder / FEATURISER_JSON).write_text(json.dumps(
            {"params": dataclasses.asdict(self.cfg), "stats": STAT_NAMES, "vocabularies": vocab}, ensure_ascii=False))
        save_file({"mean": self.mean, "std": self.std,
                   **{f"idf_{name}": vec.idf_ for name, vec in self.vectorisers.items()}},
                  str(folder / FEATURISER_ST))

    @classmethod
    def load(cls, folder: Path) -> Featuriser:
        meta = json.loads((folder / FEATURISER_JSON).read_text())
        arrays = load_file(str(folder / FEATURISER_ST))
        feat = cls(TfidfParams(**meta["params"]), meta["vocabularies"])
        for name, vec in feat.vectorisers.items():
            vec.idf_ = arrays[f"idf_{name}"]
        feat.mean, feat.std = arrays["mean"], arrays["std"]
        return feat


# ---------------------------------------------------------------- feature cache (stage tokenize)

def write_features(path: Path, ids: list[str], labels: np.ndarray, x: sp.csr_matrix, words: np.ndarray) -> None:
    save_file({"data": x.data, "indices": x.indices.astype(np.int64), "indptr": x.indptr.astype(np.int64),
               "shape": np.array(x.shape, dtype=np.int64), "labels": labels.astype(np.int64),
               "words": words.astype(np.int64)}, str(path), metadata={"ids": json.dumps(ids)})


def read_features(path: Path) -> tuple[list[str], np.ndarray, sp.csr_matrix, np.ndarray]:
    """(ids, labels, features, words per row) of one split of the cache."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        ids = json.loads(f.metadata()["ids"])
    a = load_file(str(path))
    x = sp.csr_matrix((a["data"], a["indices"], a["indptr"]), shape=tuple(a["shape"]))
    return ids, a["labels"], x, a["words"]


def tokenize(params: Params, prepared: str | Path, out: str | Path) -> dict:
    """Stage tokenize for tfidf: fit the featuriser on train, write both splits' features."""
    cfg, out = params.selected, Path(out)
    train = pd.read_parquet(Path(prepared) / "train.parquet")
    feat = Featuriser(cfg).fit(train)
    feat.save(out)
    metrics = {"model": params.model, "tokenizer": "tfidf", "max_length": None,
               "features": {name: len(vec.vocabulary_) for name, vec in feat.vectorisers.items()}}
    for split in ("train", "val"):
        df = train if split == "train" else pd.read_parquet(Path(prepared) / "val.parquet")
        x, words = feat.transform(df)
        write_features(out / f"{split}.safetensors", df["id"].tolist(), df["label"].to_numpy(), x, words)
        metrics[split] = {"rows": x.shape[0], "columns": x.shape[1], "nonzero": int(x.nnz),
                          "words": int(words.sum())}
        print(f"tokenize {split} (tfidf): {metrics[split]}")
    (out / "meta.json").write_text(json.dumps({"model": params.model, "kind": "tfidf"}, indent=2) + "\n")
    return metrics


# ---------------------------------------------------------------- classifier (stage train)

class Classifier:
    """The fitted featuriser and logistic regression coefficients: logits = X W^T + b (what
    LogisticRegression.predict_proba softmaxes)."""

    def __init__(self, featuriser: Featuriser, coef: np.ndarray, intercept: np.ndarray):
        self.featuriser, self.coef, self.intercept = featuriser, coef, intercept

    def logits(self, x: sp.csr_matrix) -> np.ndarray:
        return np.asarray(x @ self.coef.T) + self.intercept

    @property
    def params_total(self) -> int:
        return int(self.coef.size + self.intercept.size)

    def save(self, folder: Path) -> None:
        self.featuriser.save(folder)
        save_file({"coef": self.coef, "intercept": self.intercept}, str(folder / CLASSIFIER_ST))

    @classmethod
    def load(cls, folder: str | Path) -> Classifier:
        folder = Path(folder)
        a = load_file(str(folder / CLASSIFIER_ST))
        return cls(Featuriser.load(folder), a["coef"], a["intercept"])


def fit_classifier(x: sp.csr_matrix, labels: np.ndarray, cfg: TfidfParams) -> tuple[np.ndarray, np.ndarray]:
    clf = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter)
    clf.fit(x, labels)
    if list(clf.classes_) != list(range(len(LABEL_NAMES))):
        raise ValueError(f"the training split lacks a class: has {list(clf.classes_)}; more rows are needed")
    return clf.coef_.astype(np.float64), clf.intercept_.astype(np.float64)


def train(params: Params, tokens: str | Path, out: Path) -> dict:
    """Stage train for tfidf: fit on the cached training features; write the classifier (and the
    featuriser from the cache) to `out`. Returns the train metrics."""
    cfg, tokens = params.selected, Path(tokens)
    _, labels, x, words = read_features(tokens / "train.safetensors")
    start = time.perf_counter()
    coef, intercept = fit_classifier(x, labels, cfg)
    seconds = time.perf_counter() - start
    clf = Classifier(Featuriser.load(tokens), coef, intercept)
    clf.save(out)
    n = x.shape[0]
    return {"model": params.model, "weights": "fitted", "device": "cpu", "dtype": np.dtype(DTYPE).name,
            "attn_implementation": "none", "quantization": "none",
            "final_loss": log_loss(labels, softmax(clf.logits(x))), "train_seconds": seconds, "steps": 1,
            "samples": n, "tokens": int(words.sum()), "seconds_per_sample": seconds / n,
            "tokens_per_second": float(words.sum()) / seconds, "params_trainable": clf.params_total,
            "params_total": clf.params_total, "peak_memory_gb": peak_memory_gb(), "devices": 1,
            "device_seconds_per_sample": seconds / n}


# ---------------------------------------------------------------- timed prediction (evaluate, predict)

def predict_timed(clf: Classifier, x: sp.csr_matrix, batch_size: int, warmup_batches: int) -> dict:
    """Logits for every row and the time of the predict loop, as prefbench.infer.predict_sharded
    times the LLMs: `warmup_batches` untimed batches first, then every batch timed."""
    batches = [slice(i, i + batch_size) for i in range(0, x.shape[0], batch_size)]
    logits = np.zeros((x.shape[0], len(LABEL_NAMES)), dtype=np.float64)
    start = time.perf_counter()
    for b in batches[:warmup_batches]:
        clf.logits(x[b])
    warmup_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for b in batches:
        logits[b] = clf.logits(x[b])
    return {"logits": logits, "seconds": time.perf_counter() - start, "warmup_seconds": warmup_seconds,
            "batch_shapes": len({min(batch_size, x.shape[0] - i) for i in range(0, x.shape[0], batch_size)})}


# The LLMs' descriptive keys, with the values that hold for a scikit-learn model: no attention, no
# fused kernels, no adapter to merge.
INFO = {"device": "cpu", "devices": 1, "dtype": np.dtype(DTYPE).name, "attn_implementation": "none",
        "kernels": "none", "lora_merged": False, "compiled": False, "packed": False, "quantization": "none",
        "weights": "fitted", "max_length": None}


class Runner:
    """prefbench.infer.run_inference's tfidf side (prefbench.infer.LLMRunner's interface): the
    fitted classifier on features, on the CPU, in batches of models.<model>.eval_batch_size."""

    devices = ()  # no device to synchronise: the CPU
    reports_featurising = True  # featurising test rows is most of tfidf's time: predict.json shows it

    def __init__(self, params: Params, stage: str, adapter: str | Path):
        self.cfg, self.section, self.adapter = params.selected, getattr(params, stage), adapter

    def load(self) -> None:
        self.clf = Classifier.load(self.adapter)
        total = self.clf.params_total
        self.info = {**INFO, "params_total": total, "params_embedding": 0, "params_non_embedding": total,
                     "params_trainable": total}

    def encode(self, rows: pd.DataFrame | tuple[Path, str], swap: bool) -> tuple:
        """(ids, labels (None for test rows), features, words): prefbench.infer.Encoded's fields."""
        if isinstance(rows, pd.DataFrame):
            x, words = self.clf.featuriser.transform(rows, swap=swap)
            return rows["id"].tolist(), None, x, int(words.sum())
        if swap:
            raise ValueError("swap TTA needs the rows' text: pass a DataFrame, not the feature cache")
        folder, split = rows
        ids, labels, x, words = read_features(Path(folder) / f"{split}.safetensors")
        return ids, labels, x, int(words.sum())

    def predict(self, enc) -> dict:
        """Timed logits of prefbench.infer.Encoded `enc`; its words count as tokens."""
        result = predict_timed(self.clf, enc.x, self.cfg.eval_batch_size, self.section.warmup_batches)
        return {**result, "tokens": enc.tokens, "padded_tokens": enc.tokens}  # no padding
