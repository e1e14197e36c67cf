"""Turn a row (prompt, response A, response B; one or more turns each) into one token sequence.

Layout: [BOS] "<prompt>:" prompt "\\n\\n<response_a>:" A "\\n\\n<response_b>:" B, truncated to
max_length tokens. Each part is tokenised on its own and gets a budget, so a long prompt
cannot crowd the responses out (the responses are what is being judged): the prompt gets at
most `prompt_share` of the budget, each response half of the rest, and budget a short part
leaves unused is handed to the parts that still need it. Turns are joined in order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from prefbench.config import ParamsError
from prefbench.progress import progress

MARKERS = ("<prompt>: ", "\n\n<response_a>: ", "\n\n<response_b>: ")
TURN_SEPARATOR = "\n\n"


def allocate_budget(lengths: list[int], budget: int, prompt_share: float) -> list[int]:
    """Tokens each part may keep: sum <= budget; each part gets min(its length, its share) first.

    Shares: prompt `prompt_share`, each response (1 - prompt_share) / 2. Leftovers from short
    parts are then handed out, round by round, to the parts still over budget.
    """
    shares = [prompt_share, (1 - prompt_share) / 2, (1 - prompt_share) / 2]
    keep = [min(n, int(budget * s)) for n, s in zip(lengths, shares)]
    left = budget - sum(keep)
    while left > 0:
        needy = [i for i, n in enumerate(lengths) if keep[i] < n]
        if not needy:
            break
        per_part = max(1, left // len(needy))
        for i in needy:
            extra = min(per_part, lengths[i] - keep[i], left)
            keep[i] += extra
            left -= extra
            if left == 0:
                break
    return keep


def join_turns(turns: list[str]) -> str:
    return TURN_SEPARATOR.join(turns)


def special_ids(tokenizer) -> tuple[list[int], list[list[int]]]:
    """BOS (if the model uses one) and the token ids of the three part markers."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    markers = [tokenizer(m, add_special_tokens=False)["input_ids"] for m in MARKERS]
    return bos, markers


# A part's text is tokenized from its first max_length x CAP_CHARS_PER_TOKEN characters only, so a
# 10 MB cell costs what a row needs (tokenizing it whole took 3.7 GB at 100k rows with 10 MB cells:
# benchmarks/results/scale-cpu.json). The kept tokens are the same: a prefix that gives at least
# budget + CAP_MARGIN_TOKENS tokens holds every token the row keeps (at most `budget` of a part), far
# from the cut; allocate_budget gives any part of at least `budget` tokens the same share; where a
# prefix gives fewer (tokens of over 64 characters on average), the whole text is tokenized.
CAP_CHARS_PER_TOKEN = CAP_CHARS_PER_TOKEN_SHIPPED = 64
CAP_MARGIN_TOKENS = 64


def tokenize_capped(tokenizer, texts: list[str], cap: int, need: int) -> list[list[int]]:
    """Token ids of each text, from its first `cap` characters where that gives at least `need`
    tokens, else from all of it."""
    encode = dict(add_special_tokens=False, split_special_tokens=True)
    ids = tokenizer([t[:cap] for t in texts], **encode)["input_ids"]
    for i, text in enumerate(texts):
        if len(text) > cap and len(ids[i]) < need:  # long tokens: the prefix may not hold the kept ones
            ids[i] = tokenizer(text, **encode)["input_ids"]
    return ids


def encode_rows(tokenizer, prompts, responses_a, responses_b, max_length: int, prompt_share: float,
                batch_rows: int = 512, key: str = "max_length") -> tuple[list[list[int]], np.ndarray]:
    """Encode rows (each a list of turns per part); returns token ids and a truncated flag per row.

    `split_special_tokens=True`: text such as "<|end_of_text|>" inside a response stays text, so
    user content can never inject the pad or EOS token that the classifier pools on.
    """
    bos, markers = special_ids(tokenizer)
    budget = max_length - len(bos) - sum(len(m) for m in markers)
    if budget < 3:  # `key`: the params key that set max_length, for the message
        raise ParamsError(f"{key}: {max_length} tokens leave no room for text after this tokenizer's BOS "
                          f"and part markers ({max_length - budget} tokens): raise it")
    sequences, truncated = [], np.zeros(len(prompts), dtype=bool)
    cap, need = int(max_length * CAP_CHARS_PER_TOKEN), budget + CAP_MARGIN_TOKENS
    for start in progress(range(0, len(prompts), batch_rows), desc="tokenize", unit="batch"):
        stop = min(start + batch_rows, len(prompts))
        parts = [tokenize_capped(tokenizer, [join_turns(t) for t in column[start:stop]], cap, need)
                 for column in (prompts, responses_a, responses_b)]
        for j, (p, a, b) in enumerate(zip(*parts)):
            keep = allocate_budget([len(p), len(a), len(b)], budget, prompt_share)
            truncated[start + j] = keep != [len(p), len(a), len(b)]  # a cut part has > budget tokens: True
            ids = list(bos)
            for marker, part, k in zip(markers, (p, a, b), keep):
                ids += marker + part[:k]
            sequences.append(ids)
    return sequences, truncated


def to_table(ids: list[str], labels: list[int], sequences: list[list[int]]) -> pa.Table:
    return pa.table({
        "id": pa.array(ids, pa.string()),
        "label": pa.array(labels, pa.int8()),
        "input_ids": pa.array(sequences, pa.list_(pa.int32())),
    })


# More than this share of a split's rows cut to max_length: the tokenize stage warns.
TRUNCATION_WARN_SHARE = 0.5


def truncation_warning(stats: dict[str, dict], name: str, max_length: int) -> str | None:
    """One line when most rows of a split (`stats`: split -> length_stats) were cut to max_length, naming
    the key to raise; None otherwise."""
    worst = max(stats, key=lambda split: stats[split]["share_truncated"])
    s = stats[worst]
    if s["share_truncated"] <= TRUNCATION_WARN_SHARE:
        return None
    return (f"warning: {s['share_truncated']:.0%} of the {worst} rows ({s['rows_truncated']} of {s['rows']}) are cut "
            f"to models.{name}.max_length = {max_length} tokens: the model sees only the start of each "
            f"response; raise models.{name}.max_length (1024-2048 for the 8-9B models on a GPU)")


def length_stats(lengths: np.ndarray, truncated: np.ndarray) -> dict:
    return {
        "rows": int(len(lengths)),
        "tokens": int(lengths.sum()),
        "mean": round(float(lengths.mean()), 2),
        "p50": float(np.percentile(lengths, 50)),
        "p95": float(np.percentile(lengths, 95)),
        "max": int(lengths.max()),
        "share_truncated": round(float(truncated.mean()), 4),
        "rows_truncated": int(np.count_nonzero(truncated)),
    }


def write_table(table: pa.Table, path: Path) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def read_tokens(folder: str | Path, split: str) -> tuple[list[str], np.ndarray, list[np.ndarray]]:
    """(ids, labels, token-id arrays) of one split of the cache."""
    with pa.memory_map(str(Path(folder) / f"{split}.arrow")) as source:
        table = pa.ipc.open_file(source).read_all()
    seqs = [np.asarray(x, dtype=np.int64) for x in table.column("input_ids").to_pylist()]
    return table.column("id").to_pylist(), table.column("label").to_numpy().astype(np.int64), seqs
