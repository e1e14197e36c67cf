"""Property-based tests (hypothesis) of the two readers of user files: the CSV reader
(prefbench.data: read_csv + parse_frame for train.csv, read_test_csv for test.csv) and the params
loader (prefbench.config.load_params).

Every generated input either parses, every row counted (rows_read = rows_kept + the drops by
reason), or fails with DataError / ParamsError: one line naming the file (and row and column
where there is one) or the params key. Any other exception is a traceback the user would see,
and fails the test with the input that caused it.

EXAMPLES generated inputs a run in all (default 2,000: a few seconds); PREFBENCH_FUZZ_EXAMPLES=N
runs N, split the same way.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefbench.config import ParamsError, load_params, parse_params
from prefbench.data import LABEL_COLUMNS, REQUIRED_COLUMNS, TEST_COLUMNS, DataError, parse_frame, read_csv, \
    read_test_csv
from tests.conftest import ROOT

EXAMPLES = int(os.environ.get("PREFBENCH_FUZZ_EXAMPLES", "2000"))
SHARE = {"train_csv": 0.4, "raw_bytes": 0.1, "test_csv": 0.2, "params": 0.3}  # of EXAMPLES, per test


def fuzz(name: str):
    # database=None: nothing written beside the repo; deadline=None: timings vary on a shared machine
    return settings(max_examples=max(1, round(EXAMPLES * SHARE[name])), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------- CSV cells and files

# Cells: mostly from a pool of the shapes real files have and break in (one draw each: fast),
# else any text. json.dumps writes a lone surrogate as an escape, as the real files do.
POOL = [json.dumps(v) for v in (
    ["A fine answer."], ["two", "turns"], [None], [""], [None, "x"], ["", "y"], ["\ud83c half an emoji"],
    ["nul \x00 inside"], ["a, comma", 'a "quote"', "new\nline\r\n"], [], [1, 2], [True], [["nested"]],
    {"a": 1}, "a string", None, 3, ["\u00e9t\u00e9 \U0001F600"], ["x" * 300],
)] + ["[", '["unterminated', "not json", "", " ", "NaN", "null", "[null", '["raw \x00 byte"]', '["a"]]',
      '["tab\there"]', "\ufeff[]", '"quoted"', "[1,", "\\"]
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from('",\n\r\x00\\[]'),
               max_size=10)
CELL = st.sampled_from(POOL) | st.sampled_from(POOL) | st.sampled_from(POOL) | TEXT
LABEL = st.sampled_from(["0", "1", "1.0", "0.0", "", "yes", "2", "-1", "nan", "inf", "1e0", " 1"])


@st.composite
def rows(draw, columns: tuple[str, ...]) -> list[dict[str, str]]:
    n = draw(st.integers(0, 5))
    ids = draw(st.lists(st.sampled_from(["1", "2", "3", "x", "", "1.0", "NA", "1\n2"]), min_size=n, max_size=n))
    out = []
    for rid in ids:
        row = {"id": rid}
        for col in columns:
            if col in LABEL_COLUMNS:
                row[col] = draw(LABEL)
            elif col != "id":
                row[col] = draw(CELL)
        if draw(st.booleans()):  # most rows one-hot, so that some are kept
            k = draw(st.integers(0, 2))
            row.update({c: str(int(i == k)) for i, c in enumerate(LABEL_COLUMNS) if c in columns})
        out.append(row)
    return out


@st.composite
def csv_files(draw, required: tuple[str, ...]) -> bytes:
    """A CSV as a user might have it: the required columns (some left out, extra ones, shuffled),
    any cells, quoted or not, LF or CRLF, a BOM or none, sometimes cut short."""
    columns = [c for c in required if draw(st.integers(0, 9)) > 0]  # each column left out 1 time in 10
    columns += draw(st.lists(st.sampled_from(["Unnamed: 0", "model_a", "id", "extra"]), max_size=2))
    columns = draw(st.permutations(columns))
    body = draw(rows(tuple(columns)))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator=draw(st.sampled_from(["\n", "\r\n"])),
                        quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])))
    writer.writerow(columns)
    for row in body:
        writer.writerow([row.get(c, "") for c in columns])
    data = buf.getvalue().encode("utf-8", errors="surrogatepass")  # a raw lone surrogate: invalid UTF-8
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    if draw(st.integers(0, 9)) == 0:
        data = data[:draw(st.integers(0, len(data)))]  # truncated: a copy cut short
    return data


def write(data: bytes) -> Path:
    fd, name = tempfile.mkstemp(suffix=".csv", prefix="fuzz-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name)


def one_line_naming(err: Exception, path: Path) -> None:
    text = str(err)
    assert "\n" not in text and text.startswith(f"{path}: "), text
    if re.search(r": row \d+ \(id ", text):  # a row named (data.strict): its id, then the column
        assert re.search(r": row \d+ \(id .*\), column \w", text), text


def check_train_csv(data: bytes, strict: bool) -> None:
    path = write(data)
    try:
        df = read_csv(path)
        rows_out, report = parse_frame(df, str(path), strict=strict)
    except DataError as err:
        one_line_naming(err, path)
        return
    finally:
        path.unlink()
    assert report.rows_read == len(df) == report.rows_kept + sum(report.dropped.values())
    assert len(rows_out) == report.rows_kept and set(rows_out["label"]) <= {0, 1, 2}
    assert not strict or not report.dropped
    for col in ("prompt", "response_a", "response_b"):  # every kept turn is text that UTF-8 can write
        for turns in rows_out[col]:
            assert all(isinstance(t, str) and "\x00" not in t for t in turns)
            "".join(turns).encode("utf-8")


@fuzz("train_csv")
@given(csv_files(REQUIRED_COLUMNS), st.booleans())
def test_train_csv_parses_with_every_row_counted_or_fails_in_one_line(data, strict):
    check_train_csv(data, strict)


@fuzz("raw_bytes")
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", errors="surrogatepass")))
def test_any_bytes_as_train_csv(data):
    check_train_csv(data, strict=False)


@fuzz("test_csv")
@given(csv_files(TEST_COLUMNS) | st.binary(max_size=200))
def test_test_csv_gives_every_row_or_fails_in_one_line(data):
    """test.csv: nothing is dropped (every row needs a prediction); every cell becomes text."""
    path = write(data)
    try:
        df, report = read_test_csv(path)
    except DataError as err:
        one_line_naming(err, path)
        return
    finally:
        path.unlink()
    assert report.rows_read == report.rows_kept == len(df) and not report.dropped
    for col in ("prompt", "response_a", "response_b"):
        for turns in df[col]:
            assert all(isinstance(t, str) and "\x00" not in t for t in turns)
            "".join(turns).encode("utf-8")


# ---------------------------------------------------------------- params

SHIPPED = yaml.safe_load((ROOT / "params.yaml").read_text())


def key_paths(node, prefix=()) -> list[tuple]:
    """Every key path of the shipped params: sections, model entries and their fields."""
    paths = []
    if isinstance(node, dict):
        for k, v in node.items():
            paths.append((*prefix, k))
            paths += key_paths(v, (*prefix, k))
    return paths


PATHS = key_paths(SHIPPED)
SCALAR = (st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=True)
          | st.text(max_size=8) | st.sampled_from(["2e-4", "yes", "no", "null", "~", "1_000", "0x10", "auto", "4bit"]))
YAML_VALUE = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=3), max_leaves=6)


@st.composite
def params_edits(draw):
    """The shipped params with one key set to any YAML value, deleted, or joined by an unknown one."""
    raw = json.loads(json.dumps(SHIPPED))  # a deep copy
    path = draw(st.sampled_from(PATHS))
    parent = raw
    for k in path[:-1]:
        parent = parent[k]
    action = draw(st.sampled_from(["set", "set", "set", "delete", "add"]))
    if action == "set":
        parent[path[-1]] = draw(YAML_VALUE)
    elif action == "delete":
        del parent[path[-1]]
    else:
        path = (*path[:-1], draw(st.sampled_from(["extra", "lr", "max_len", "Model"])))
        parent[path[-1]] = draw(YAML_VALUE)
    return raw, ".".join(map(str, path))


# YAML through libyaml when it is there: the same YAML, a tenth of the time a round trip
LOADER, DUMPER = getattr(yaml, "CSafeLoader", yaml.SafeLoader), getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@fuzz("params")
@given(params_edits())
def test_params_any_value_at_any_key_loads_or_names_the_key(edit):
    """The edited params written as YAML and read back (what load_params reads), then parsed."""
    raw, key = edit
    try:
        parse_params(yaml.load(yaml.dump(raw, Dumper=DUMPER, sort_keys=False), Loader=LOADER))
    except ParamsError as err:
        text = str(err)
        assert "\n" not in text, text
        # the key itself, or (a whole entry replaced) the first wrong key within it; a selected
        # model deleted or renamed: `model` names it
        assert key in text or (key.startswith("models") and "model" in text), (key, text)


@pytest.mark.parametrize("text,message", [
    ("data: [unclosed\n", "not valid YAML"),
    ("- a list\n", "expected a mapping of sections"),
    ("", "expected a mapping of sections"),
    (None, "file not found"),
])
def test_params_file_that_is_not_a_mapping_fails_in_one_line(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)
