
import pandas as pd
import pytest

from prefbench.data import DataError, parse_frame, parse_turns, read_csv, split_by_prompt


def test_real_sample_parses(real_sample):
    df = read_csv(real_sample)
    assert len(df) == 999
    rows, report = parse_frame(df, str(real_sample), strict=True)
    assert report.rows_read == report.rows_kept == len(rows) == 999 and not report.dropped
    assert report.flagged == {"both_responses_empty": 1}  # id 57180984: both responses [null]
    multi = rows["prompt"].map(len) > 1
    assert 0.08 < multi.mean() < 0.2  # ~13% multi-turn
    # null turns are kept as "" and counted
    assert report.repaired["null_turn_as_empty"] >= 1
    assert all(isinstance(t, str) for col in ("response_a", "response_b") for turns in rows[col] for t in turns)
    assert set(rows["label"]) == {0, 1, 2}


def test_surrogate_pair_emoji_decodes_to_one_character():
    turns = parse_turns('["pizza \\ud83c\\udf55", null, ""]')
    assert turns == ["pizza \U0001F355", None, ""]
    assert len(turns[0]) == 7


def test_real_sample_emoji_survive(real_sample):
    rows, _ = parse_frame(read_csv(real_sample), "sample")
    text = " ".join(t for turns in rows["response_a"] for t in turns)
    assert "\U0001F34D" in text  # pineapple, written as \ud83c\udf4d in the CSV
    text.encode("utf-8")  # no lone surrogates left anywhere


def _frame(**overrides):
    row = {"id": "1", "model_a": "x", "model_b": "y", "prompt": '["hi"]', "response_a": '["a"]',
           "response_b": '["b"]', "winner_model_a": "1", "winner_model_b": "0", "winner_tie": "0"}
    rows = []
    for i in range(4):
        r = dict(row, id=str(i), prompt=f'["hi {i}"]')
        rows.append(r)
    for k, v in overrides.items():
        rows[0][k] = v
    return pd.DataFrame(rows)


@pytest.mark.parametrize("column,value,reason", [
    ("prompt", "not json", "bad_json_prompt"),
    ("response_a", '{"a": 1}', "bad_json_response_a"),
    ("response_b", '["x", "y"]', "turn_count_mismatch"),
    ("winner_model_b", "1", "bad_label"),
    ("winner_model_a", "0", "bad_label"),
])
def test_bad_rows_are_dropped_and_counted(column, value, reason):
    rows, report = parse_frame(_frame(**{column: value}), "t.csv")
    assert len(rows) == 3
    assert report.dropped == {reason: 1}


@pytest.mark.parametrize("column,value,named", [
    ("prompt", "not json", "prompt"),
    ("response_b", '["x", "y"]', "prompt,response_a,response_b"),
    ("winner_tie", "yes", "winner_model_a,winner_model_b,winner_tie"),
])
def test_strict_mode_names_file_row_id_and_column(column, value, named):
    df = _frame()
    df.loc[2, column] = value
    with pytest.raises(DataError, match=f"^t.csv: row 3 \\(id 2\\), column {named}: "):
        parse_frame(df, "t.csv", strict=True)


def test_both_responses_empty_is_kept_and_flagged_not_dropped():
    rows, report = parse_frame(_frame(response_a="[null]", response_b='[""]'), "t.csv", strict=True)
    assert len(rows) == 4 and not report.dropped
    assert report.flagged == {"both_responses_empty": 1} and report.repaired == {"null_turn_as_empty": 1}
    assert report.examples == {"both_responses_empty": ["row 1 (id 0)"]}
    assert rows.loc[0, "response_a"] == [""] == rows.loc[0, "response_b"]


def test_duplicate_ids_and_lone_surrogates():
    df = _frame(response_a='["bad \\ud83c end"]')
    df.loc[3, "id"] = "2"
    rows, report = parse_frame(df, "t.csv")
    assert report.dropped == {"duplicate_id": 1}
    assert report.repaired["lone_surrogate_replaced"] == 1
    assert rows.loc[0, "response_a"] == ["bad \ufffd end"]


def test_extra_index_column_and_missing_column(tmp_path):
    path = tmp_path / "train.csv"
    _frame().to_csv(path)  # pandas writes its index as an unnamed first column
    assert len(read_csv(path)) == 4
    _frame().drop(columns="winner_tie").to_csv(path, index=False)
    with pytest.raises(DataError, match=f"{path}: missing required column\\(s\\) winner_tie"):
        read_csv(path)
    with pytest.raises(DataError, match="file not found"):
        read_csv(tmp_path / "nope.csv")


def test_split_is_deterministic_grouped_and_stratified(real_sample):
    rows, _ = parse_frame(read_csv(real_sample), "sample")
    # Duplicate some prompts so grouping matters.
    rows = pd.concat([rows, rows.iloc[:100].assign(id=lambda d: d["id"] + "x")], ignore_index=True)
    labels, groups = rows["label"].to_numpy(), rows["prompt_key"].to_numpy()
    a = split_by_prompt(labels, groups, 0.2, seed=1)
    b = split_by_prompt(labels, groups, 0.2, seed=1)
    c = split_by_prompt(labels, groups, 0.2, seed=2)
    assert (a == b).all() and not (a == c).all()
    assert 0.15 < a.mean() < 0.25
    assert not set(groups[a]) & set(groups[~a])  # no prompt on both sides
    for k in range(3):
        assert abs((labels[a] == k).mean() - (labels == k).mean()) < 0.05


def test_test_csv_reader_keeps_every_row_and_ignores_labels(real_sample, tmp_path):
    """The reverse of 'test.csv where labels are needed': a train.csv given to `predict` is
    accepted, labels ignored, and no row is dropped (a submission needs every id)."""
    from prefbench.data import read_test_csv
    df, report = read_test_csv(real_sample)
    assert len(df) == 999 and report.rows_kept == 999 and not report.dropped
    assert list(df.columns) == ["id", "prompt", "response_a", "response_b"]
    bad = tmp_path / "test.csv"
    bad.write_text('id,prompt,response_a,response_b\n1,not json,"[""a""]","[""b""]"\n')
    df, report = read_test_csv(bad)
    assert df.loc[0, "prompt"] == ["not json"] and report.repaired["raw_text_prompt"] == 1
