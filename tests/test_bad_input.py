"""Bad input through the prepare stage script: a clear error naming file, row and column, or a
counted drop; never a silent loss and never a stack trace as the only message."""

import json

import pandas as pd
import pytest
import yaml

from tests import forked
from tests.conftest import ROOT

GOOD = {"model_a": "m1", "model_b": "m2", "response_a": '["A fine answer."]',
        "response_b": '["Another answer."]', "winner_model_a": "1", "winner_model_b": "0", "winner_tie": "0"}


def good_rows(n=30):
    return [dict(GOOD, id=str(1000 + i), prompt=json.dumps([f"question {i}?"]),
                 winner_model_a=str(int(i % 3 == 0)), winner_model_b=str(int(i % 3 == 1)),
                 winner_tie=str(int(i % 3 == 2))) for i in range(n)]


def params(tmp_path, **data):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"].update(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def prepare(tmp_path, csv, **data):
    return forked.run("-m", "stages.prepare", "--params", params(tmp_path, **data), "--csv", csv,
                      "--out", tmp_path / "prepared", "--metrics", tmp_path / "data.json")


def write(path, rows, **to_csv):
    pd.DataFrame(rows).to_csv(path, **{"index": False, **to_csv})
    return path


BAD_ROWS = [  # (reason, column overrides)
    ("bad_json_prompt", {"prompt": "not json"}),
    ("bad_json_response_a", {"response_a": '{"a": 1}'}),
    ("bad_json_response_b", {"response_b": '["unterminated'}),
    ("turn_count_mismatch", {"response_b": '["one", "two"]'}),
    ("bad_label", {"winner_model_a": "1", "winner_model_b": "1"}),  # two winners
    ("bad_label", {"winner_model_a": "0"}),  # none
    ("bad_label", {"winner_tie": "yes"}),  # non-numeric
]


def test_every_bad_row_is_dropped_and_counted(tmp_path):
    rows = good_rows()
    for k, (_, override) in enumerate(BAD_ROWS):
        rows.append({**GOOD, "id": str(k), "prompt": json.dumps([f"bad {k}"]), **override})
    rows.append(dict(rows[0]))  # duplicate id
    # kept, with repairs: null and empty turns, a lone surrogate, a NUL escape and a raw NUL, 10 MB of text
    rows.append(dict(GOOD, id="r1", prompt='["two", "turns"]', response_a='[null, "x"]', response_b='["", "y"]'))
    rows.append(dict(GOOD, id="r2", prompt='["half an emoji \\ud83c"]'))
    rows.append(dict(GOOD, id="r3", prompt='["nul \\u0000 escape"]', response_a='["raw \x00 byte"]'))
    rows.append(dict(GOOD, id="r4", prompt='["huge"]', response_a=json.dumps(["word " * 2_000_000])))
    # kept and flagged: both responses null or empty is a real, labelled row (not malformed)
    rows.append(dict(GOOD, id="r5", prompt='["no answers"]', response_a="[null]", response_b='[""]'))
    # a pandas index column, a UTF-8 BOM and Windows line endings, all at once
    csv = write(tmp_path / "train.csv", rows, index=True, encoding="utf-8-sig", lineterminator="\r\n")
    proc = prepare(tmp_path, csv)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "data.json").read_text())
    expected = {}
    for reason, _ in BAD_ROWS:
        expected[reason] = expected.get(reason, 0) + 1
    expected["duplicate_id"] = 1
    assert m["dropped"] == expected
    assert m["rows_read"] == len(rows) == m["rows_kept"] + m["rows_dropped"]
    assert m["rows_kept"] == 30 + 5
    assert m["repaired"] == {"null_turn_as_empty": 2, "lone_surrogate_replaced": 1, "nul_removed": 2}
    assert m["flagged"] == {"both_responses_empty": 1}
    assert "row 31 (id 0), column prompt" in proc.stdout  # where each drop came from
    assert f"kept (both_responses_empty): row {len(rows)} (id r5)" in proc.stdout
    kept = pd.concat([pd.read_parquet(tmp_path / "prepared" / f) for f in ("train.parquet", "val.parquet")])
    by_id = kept.set_index("id")
    assert list(by_id.loc["r1", "response_a"]) == ["", "x"]
    assert list(by_id.loc["r2", "prompt"]) == ["half an emoji \ufffd"]
    assert "\x00" not in by_id.loc["r3", "prompt"][0] + by_id.loc["r3", "response_a"][0]
    assert len(by_id.loc["r4", "response_a"][0]) == 10_000_000
    assert list(by_id.loc["r5", "response_a"]) == [""] and list(by_id.loc["r5", "response_b"]) == [""]


def test_strict_mode_fails_on_first_bad_row_naming_file_row_and_column(tmp_path):
    rows = good_rows(5) + [dict(GOOD, id="77", prompt='["ok"]', response_b='["a", "b"]')] + good_rows(3)
    csv = write(tmp_path / "train.csv", rows)
    proc = prepare(tmp_path, csv, strict=True)
    assert proc.returncode == 2
    assert f"{csv}: row 6 (id 77), column prompt,response_a,response_b: turns per column differ" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data.json").exists()


def test_strict_mode_accepts_every_row_of_the_real_sample(tmp_path, real_sample):
    """The real train.csv has rows whose responses are both null (id 57180984 in the sample):
    valid, labelled rows that strict mode keeps, flags and counts; nothing is dropped."""
    proc = prepare(tmp_path, real_sample, strict=True)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "data.json").read_text())
    assert m["rows_read"] == m["rows_kept"] == m["train_rows"] + m["val_rows"] == 999
    assert m["dropped"] == {} and m["flagged"] == {"both_responses_empty": 1}
    assert "kept (both_responses_empty): row 781 (id 57180984)" in proc.stdout
    kept = pd.concat([pd.read_parquet(tmp_path / "prepared" / f) for f in ("train.parquet", "val.parquet")])
    row = kept.set_index("id").loc["57180984"]
    assert list(row["response_a"]) == [""] == list(row["response_b"]) and row["label"] == 2  # a tie


@pytest.mark.parametrize("content,message", [
    (None, "file not found"),
    ("", "file is empty"),
    ("id,prompt,response_a,response_b,winner_model_a,winner_model_b,winner_tie\n", "header only, no data rows"),
    ("id,prompt,response_a,response_b,winner_model_a,winner_model_b\n1,[],[],[],1,0\n",
     "missing required column(s) winner_tie; have ['id', 'prompt', 'response_a', 'response_b', 'winner_model_a', "
     "'winner_model_b']"),
    ('id,prompt,response_a,response_b\n1,"[""q""]","[""a""]","[""b""]"\n',
     "no label columns (winner_model_a, winner_model_b, winner_tie): this looks like the competition's test.csv; "
     "training and evaluation need train.csv"),
])
def test_unusable_files_fail_with_one_clear_line(tmp_path, content, message):
    csv = tmp_path / "train.csv"
    if content is not None:
        csv.write_text(content)
    proc = prepare(tmp_path, csv)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {csv}: {message}"  # one line: the file, then what is wrong


@pytest.mark.parametrize("key,value,message", [
    ("val_fraction", 1.5, "data.val_fraction must be in (0, 1), got 1.5"),
    ("val_fraction", 0, "data.val_fraction must be in (0, 1), got 0"),
    ("max_rows", -1, "data.max_rows must be >= 0"),
    ("strict", "yes", "data.strict: expected bool, got 'yes'"),
])
def test_bad_params_fail_with_the_key(tmp_path, key, value, message):
    csv = write(tmp_path / "train.csv", good_rows())
    proc = prepare(tmp_path, csv, **{key: value})
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_model_lists_valid_ones_through_a_stage(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"] = "phi3"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = forked.run("-m", "stages.tokenize", "--params", path, "--prepared", "x", "--out", tmp_path / "t",
                      "--metrics", tmp_path / "t.json")
    assert proc.returncode == 2
    assert "error: model: unknown model 'phi3'; valid: gemma2, llama3, mistral, qwen2" in proc.stderr
