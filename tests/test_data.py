from __future__ import annotations

import csv
import gzip
import json
import os
import warnings
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from metric_sim.data import (
    BAD_ROW_KINDS,
    DataError,
    LoadReport,
    PairDataset,
    UnionFind,
    default_data_dir,
    list_presets,
    load_pairs,
    load_preset,
    text_id,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = (REPO_ROOT / os.environ.get("METRIC_SIM_DATA", "../shared/data")).resolve()
requires_data = pytest.mark.skipif(
    not DATA_DIR.is_dir(),
    reason=f"real benchmark data not found at {DATA_DIR} (set METRIC_SIM_DATA)",
)

HEADER = ["pair_id", "qid_a", "qid_b", "text_a", "text_b", "label"]
# Hand-checkable: A~B and B~C are duplicates, C/D is not; one text has quotes, tabs are absent.
ROWS = [
    ["p1", "A", "B", "How do I learn Python?", "What is the best way to learn Python?", 1],
    ["p2", "B", "C", "What is the best way to learn Python?", 'Best way to learn "python" fast', 1],
    ["p3", "C", "D", 'Best way to learn "python" fast', "Where can I buy a café ☕?", 0],
    ["p4", "E", "F", "Why is the sky blue?", "What colour is the sea?", 0],
]


def _write_delimited(path: Path, rows, *, delimiter="\t", header=HEADER, opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter=delimiter, lineterminator="\n")
        if header is not None:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def _write_text(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


def _records(rows=ROWS) -> list[dict]:
    return [dict(zip(HEADER, row, strict=True)) for row in rows]


def _as_dataset(rows=ROWS) -> datasets.Dataset:
    return datasets.Dataset.from_list(_records(rows))


FIXTURE_COLUMNS = {"id_a": "qid_a", "id_b": "qid_b", "pair_id": "pair_id"}


def _make_source(kind: str, tmp_path: Path):
    if kind == "tsv":
        return _write_delimited(tmp_path / "pairs.tsv", ROWS)
    if kind == "txt":
        return _write_delimited(tmp_path / "pairs.txt", ROWS)
    if kind == "csv":
        return _write_delimited(tmp_path / "pairs.csv", ROWS, delimiter=",")
    if kind == "tsv.gz":
        return _write_delimited(tmp_path / "pairs.tsv.gz", ROWS, opener=gzip.open)
    if kind in ("jsonl", "jsonl.gz"):
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _records())
        data = lines.encode("utf-8")
        if kind.endswith(".gz"):
            data = gzip.compress(data)
        return _write_text(tmp_path / f"pairs.{kind}", data)
    if kind == "parquet":
        path = tmp_path / "pairs.parquet"
        pq.write_table(pa.Table.from_pylist(_records()), path)
        return path
    if kind == "memory":
        return _as_dataset()
    if kind == "hf-folder":
        path = tmp_path / "saved"
        _as_dataset().save_to_disk(str(path))
        return path
    raise AssertionError(kind)


# --------------------------------------------------------------------------- ids / union-find


def test_text_id_is_stable_sha1_prefix():
    assert text_id("abc") == "h" + "a9993e364706816aba3e25717850c26c9cd0d89d"[:16]
    assert text_id("abc") == text_id("abc")
    assert text_id("abc") != text_id("abc ")
    with pytest.raises(TypeError):
        text_id(3)  # type: ignore[arg-type]


def test_union_find_groups_and_sizes():
    uf = UnionFind(["a", "b", "c", "d", "e"])
    uf.union("a", "b")
    uf.union("c", "d")
    uf.union("b", "d")
    assert uf.connected("a", "c")
    assert not uf.connected("a", "e")
    assert list(uf.groups().values()) == [["a", "b", "c", "d"], ["e"]]
    uf.union("x", "y")  # union adds unknown keys
    assert "x" in uf and len(uf) == 7
    with pytest.raises(KeyError, match="never added"):
        uf.find("zzz")


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    "kind", ["tsv", "txt", "csv", "tsv.gz", "jsonl", "jsonl.gz", "parquet", "memory", "hf-folder"]
)
def test_every_format_loads_the_fixture_identically(kind, tmp_path):
    reference = load_pairs(_as_dataset(), **FIXTURE_COLUMNS)
    pairs = load_pairs(_make_source(kind, tmp_path), **FIXTURE_COLUMNS)
    assert pairs.dataset.to_dict() == reference.dataset.to_dict()
    assert pairs.texts_b[1] == 'Best way to learn "python" fast'
    assert pairs.texts_b[2] == "Where can I buy a café ☕?"
    assert pairs.labels.dtype == np.int64 and pairs.labels.tolist() == [1, 1, 0, 0]
    assert pairs.ids_a == ["A", "B", "C", "E"]
    assert pairs.pair_ids == ["p1", "p2", "p3", "p4"]
    assert pairs.report.rows_read == 4 and pairs.report.pairs == 4
    assert set(pairs.report.bad_rows) == set(BAD_ROW_KINDS)


def test_format_override_and_unknown_suffix(tmp_path):
    weird = _write_delimited(tmp_path / "pairs.dat", ROWS)
    with pytest.raises(DataError, match=r"unknown file type '\.dat'.*\.jsonl"):
        load_pairs(weird)
    assert len(load_pairs(weird, format="tsv")) == 4
    with pytest.raises(ValueError, match="format must be one of"):
        load_pairs(weird, format="xlsx")


def test_headerless_integer_columns_and_default_ids(tmp_path):
    path = _write_delimited(tmp_path / "pairs.tsv", ROWS, header=None)
    pairs = load_pairs(path, header=False, text_a=3, text_b=4, label=5)
    assert pairs.ids_a[0] == text_id("How do I learn Python?")
    assert pairs.pair_ids == ["1", "2", "3", "4"]  # default pair id: the line number
    with pytest.raises(ValueError, match="0-based integer indices"):
        load_pairs(path, header=False)
    with pytest.raises(DataError, match="out of range"):
        load_pairs(path, header=False, text_a=3, text_b=4, label=9)


def test_in_memory_default_pair_id_is_row_index():
    pairs = load_pairs(_as_dataset())
    assert pairs.pair_ids == ["0", "1", "2", "3"]
    with pytest.raises(TypeError, match="DatasetDict"):
        load_pairs(datasets.DatasetDict({"train": _as_dataset()}))


def test_text_ids_hash_texts_when_no_id_columns(tmp_path):
    pairs = load_pairs(_make_source("tsv", tmp_path))
    again = load_pairs(_make_source("tsv", tmp_path))
    assert pairs.ids_a == again.ids_a
    assert pairs.ids_b[0] == pairs.ids_a[1] == text_id("What is the best way to learn Python?")


def test_qid_ids_are_used_and_conflicts_detected(tmp_path):
    rows = [*ROWS, ["p5", "A", "G", "A different text for qid A", "Something else", 0]]
    path = _write_delimited(tmp_path / "pairs.tsv", rows)
    with pytest.raises(DataError) as info:
        load_pairs(path, **FIXTURE_COLUMNS)
    message = str(info.value)
    assert "line 2" in message and "line 6" in message and "'A'" in message
    assert info.value.line == 6 and info.value.column == "qid_a" and info.value.kind == "malformed"
    with pytest.warns(UserWarning, match="dropped 1 bad row"):
        pairs = load_pairs(path, on_bad_row="skip", **FIXTURE_COLUMNS)
    assert pairs.report.bad_rows["malformed"] == 1 and len(pairs) == 4
    with pytest.raises(ValueError, match="both id_a and id_b"):
        load_pairs(path, id_a="qid_a")


def test_quoting_none_keeps_bare_quotes(tmp_path):
    text = 'pair_id\ttext_a\ttext_b\tlabel\n1\t"the witness", he said\tHe said "hi\t1\n'
    path = _write_text(tmp_path / "bare.tsv", text)
    pairs = load_pairs(path, quoting="none")
    assert pairs.texts_a == ['"the witness", he said'] and pairs.texts_b == ['He said "hi']


def test_crlf_bom_and_extra_fields(tmp_path):
    text = "\ufefftext_a\ttext_b\tlabel\r\nx\ty\t1\r\nu\tv\t0\textra\textra\r\n"
    path = _write_text(tmp_path / "crlf.tsv", text)
    with pytest.raises(DataError, match="line 3: expected 3 fields, got 5"):
        load_pairs(path)
    pairs = load_pairs(path, allow_extra_fields=True)
    assert pairs.texts_a == ["x", "u"] and pairs.texts_b == ["y", "v"]  # no stray \r


def test_labels_accepted_forms_and_label_map(tmp_path):
    records = [
        {"text_a": "a", "text_b": "b", "label": " 1 "},
        {"text_a": "a", "text_b": "c", "label": "0.0"},
        {"text_a": "a", "text_b": "d", "label": True},
        {"text_a": "a", "text_b": "e", "label": 1.0},
        {"text_a": "a", "text_b": "f", "label": 0},
    ]
    pairs = load_pairs(
        datasets.Dataset.from_list([{**r, "label": str(r["label"])} for r in records[:2]])
    )
    assert pairs.labels.tolist() == [1, 0]
    path = _write_text(tmp_path / "l.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    assert load_pairs(path).labels.tolist() == [1, 0, 1, 1, 0]
    mapped = _write_text(
        tmp_path / "m.tsv", "text_a\ttext_b\tlabel\nx\ty\tduplicate\nx\tz\tnot_duplicate\n"
    )
    pairs = load_pairs(mapped, label_map={"duplicate": 1, "not_duplicate": 0})
    assert pairs.labels.tolist() == [1, 0]
    with pytest.raises(DataError, match="label must be one of"):
        load_pairs(mapped, label_map={"duplicate": 1})
    with pytest.raises(ValueError, match="label_map values must be 0 or 1"):
        load_pairs(mapped, label_map={"duplicate": 2})


def test_self_and_duplicate_pairs_are_kept_and_counted(tmp_path):
    text = "text_a\ttext_b\tlabel\nx\tx\t1\na\tb\t0\nb\ta\t0\na\tb\t0\n"
    pairs = load_pairs(_write_text(tmp_path / "d.tsv", text))
    assert len(pairs) == 4
    assert pairs.report.self_pairs == 1 and pairs.report.duplicate_pairs == 2


# --------------------------------------------------------------------------- bad input


def test_bad_label_message_names_file_line_and_column(tmp_path):
    text = "text_a\ttext_b\tlabel\nx\ty\t1\nu\tv\t2\n"
    path = _write_text(tmp_path / "data.tsv", text)
    with pytest.raises(DataError) as info:
        load_pairs(path)
    assert str(info.value) == f"{path}, line 3, column 'label': label must be 0 or 1, got '2'"
    assert (info.value.line, info.value.column, info.value.kind) == (3, "label", "bad_label")
    assert isinstance(info.value, ValueError)


def test_empty_text_is_reported(tmp_path):
    path = _write_text(tmp_path / "e.tsv", "text_a\ttext_b\tlabel\nx\ty\t1\nu\t   \t0\n")
    with pytest.raises(
        DataError, match=r"e\.tsv, line 3, column 'text_b': text_b is empty"
    ) as info:
        load_pairs(path)
    assert info.value.kind == "empty_text"
    jsonl = _write_text(tmp_path / "e.jsonl", '{"text_a": null, "text_b": "y", "label": 1}\n')
    with pytest.raises(DataError, match="line 1, column 'text_a'"):
        load_pairs(jsonl)


def test_missing_column_lists_found_columns(tmp_path):
    path = _write_delimited(tmp_path / "pairs.tsv", ROWS)
    with pytest.raises(
        DataError, match=r"missing column 'question1'; columns found: \['pair_id', 'qid_a'"
    ):
        load_pairs(path, text_a="question1")
    with pytest.raises(DataError, match="columns found"):
        load_pairs(_as_dataset(), label="is_duplicate")
    with pytest.raises(DataError, match="columns found"):
        load_pairs(_make_source("parquet", tmp_path), label="is_duplicate")
    with pytest.raises(DataError, match="columns found"):
        load_pairs(_make_source("jsonl", tmp_path), label="is_duplicate")


def test_non_utf8_bytes_name_the_line_even_in_skip_mode(tmp_path):
    data = b"text_a\ttext_b\tlabel\nx\ty\t1\ncaf\xe9\tv\t0\n"
    path = _write_text(tmp_path / "latin1.tsv", data)
    for mode in ("error", "skip"):
        with pytest.raises(DataError, match=r"latin1\.tsv, line 3: bytes are not valid utf-8"):
            load_pairs(path, on_bad_row=mode)
    assert load_pairs(path, encoding="latin-1").texts_a == ["x", "café"]


def test_truncated_gzip_is_a_data_error(tmp_path):
    full = _write_delimited(tmp_path / "full.tsv.gz", ROWS * 50, opener=gzip.open).read_bytes()
    path = _write_text(tmp_path / "cut.tsv.gz", full[: len(full) // 2])
    with pytest.raises(DataError, match=r"cut\.tsv\.gz.*truncated or corrupt"):
        load_pairs(path, on_bad_row="skip", **FIXTURE_COLUMNS)
    fake = _write_text(tmp_path / "fake.tsv.gz", b"text_a\ttext_b\tlabel\nx\ty\t1\n")
    with pytest.raises(DataError, match=r"fake\.tsv\.gz"):
        load_pairs(fake)


def test_last_line_cut_short_is_reported_as_truncated(tmp_path):
    path = _write_text(tmp_path / "cut.tsv", "text_a\ttext_b\tlabel\nx\ty\t1\nu\tv")
    with pytest.raises(
        DataError, match=r"cut\.tsv, line 3: expected 3 fields, got 2.*truncated"
    ) as info:
        load_pairs(path)
    assert info.value.kind == "malformed"
    jsonl = _write_text(
        tmp_path / "cut.jsonl", '{"text_a": "x", "text_b": "y", "label": 1}\n{"text_a": "u", "te'
    )
    with pytest.raises(DataError, match=r"cut\.jsonl, line 2: invalid JSON.*truncated"):
        load_pairs(jsonl)


def test_unbalanced_quote_reports_its_line_span(tmp_path):
    text = 'text_a\ttext_b\tlabel\nx\ty\t1\n"open quote\tv\t0\nu\tw\t1\n'
    with pytest.raises(
        DataError, match=r"line 3: expected 3 fields, got 1 \(record spans lines 3-4"
    ):
        load_pairs(_write_text(tmp_path / "q.tsv", text))


def test_empty_and_header_only_files(tmp_path):
    with pytest.raises(DataError, match=r"empty\.tsv: no data rows"):
        load_pairs(_write_text(tmp_path / "empty.tsv", ""))
    with pytest.raises(DataError, match=r"head\.tsv: no data rows"):
        load_pairs(_write_text(tmp_path / "head.tsv", "text_a\ttext_b\tlabel\n"))
    with pytest.raises(FileNotFoundError):
        load_pairs(tmp_path / "nope.tsv")


def test_skip_mode_counts_and_warns_once(tmp_path):
    text = (
        "text_a\ttext_b\tlabel\n"
        "x\ty\t1\n"
        "u\tv\t2\n"  # bad_label (line 3)
        "only two\tfields\n"  # malformed
        "\tv\t0\n"  # empty_text
        "p\tq\tyes\n"  # bad_label
        "\n"  # blank lines are skipped, not counted
        "m\tn\t0\n"
    )
    path = _write_text(tmp_path / "bad.tsv", text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pairs = load_pairs(path, on_bad_row="skip")
    assert len(caught) == 1 and caught[0].category is UserWarning
    assert caught[0].filename == __file__  # points at the caller, not at data.py
    message = str(caught[0].message)
    assert "bad.tsv" in message and "dropped 4 bad row(s)" in message and "line 3" in message
    report = pairs.report
    assert report.bad_rows == {"malformed": 1, "bad_label": 2, "empty_text": 1}
    assert report.rows_read == 6 and report.pairs == 2
    assert report.rows_read == report.pairs + sum(report.bad_rows.values()) + report.middle_band
    assert report.bad_row_examples[0] == {
        "line": 3,
        "column": "label",
        "kind": "bad_label",
        "message": "label must be 0 or 1, got '2'",
    }
    assert pairs.pair_ids == ["2", "8"]
    assert report.to_dict()["bad_rows"]["empty_text"] == 1
    with pytest.raises(ValueError, match="on_bad_row must be one of"):
        load_pairs(path, on_bad_row="ignore")


def test_skip_mode_with_no_valid_rows_raises(tmp_path):
    path = _write_text(tmp_path / "allbad.tsv", "text_a\ttext_b\tlabel\nx\ty\t7\n")
    with pytest.raises(DataError, match="no valid pairs"):
        load_pairs(path, on_bad_row="skip")


def test_in_memory_errors_name_the_row():
    ds = datasets.Dataset.from_list(
        [{"text_a": "a", "text_b": "b", "label": 1}, {"text_a": "a", "text_b": "c", "label": 5}]
    )
    with pytest.raises(DataError, match=r"<in-memory Dataset>, row 2, column 'label'"):
        load_pairs(ds)


def test_damaged_parquet_saved_dict_and_nan_text(tmp_path):
    broken = _write_text(tmp_path / "broken.parquet", b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"broken\.parquet: cannot read parquet"):
        load_pairs(broken)
    folder = tmp_path / "dict"
    datasets.DatasetDict({"train": _as_dataset()}).save_to_disk(str(folder))
    with pytest.raises(DataError, match=r"DatasetDict with splits \['train'\]"):
        load_pairs(folder)
    assert len(load_pairs(folder / "train", format="hf", **FIXTURE_COLUMNS)) == 4
    nan_text = tmp_path / "nan.parquet"
    pq.write_table(
        pa.table({"text_a": ["x", None], "text_b": ["y", "z"], "label": [1, 0]}), nan_text
    )
    with pytest.raises(DataError, match=r"nan\.parquet, row 2, column 'text_a': text_a is empty"):
        load_pairs(nan_text)


def test_data_error_pickles_with_attributes():
    import pickle

    err = DataError("boom", source="f.tsv", line=3, column="label", kind="bad_label")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) == "f.tsv, line 3, column 'label': boom"
    assert (again.line, again.column, again.kind) == (3, "label", "bad_label")


# --------------------------------------------------------------------------- clusters and splits


def test_cluster_labels_hand_checked():
    pairs = load_pairs(_as_dataset(), **FIXTURE_COLUMNS)
    assert pairs.unique_texts()[0] == ["A", "B", "C", "D", "E", "F"]
    assert pairs.cluster_labels() == {"A": 0, "B": 0, "C": 0, "D": 1, "E": 2, "F": 3}
    a, b = pairs.pair_cluster_labels()
    assert a.tolist() == [0, 0, 0, 2] and b.tolist() == [0, 0, 1, 3]
    summary = pairs.summary()
    assert (
        summary["clusters"] == 1 and summary["singletons"] == 3 and summary["largest_cluster"] == 3
    )
    assert summary["unique_texts"] == 6 and summary["positives"] == 2 and summary["negatives"] == 2


def test_select_copies_the_report():
    pairs = load_pairs(_as_dataset(), **FIXTURE_COLUMNS)
    sub = pairs.select([3, 0])
    assert sub.pair_ids == ["p4", "p1"] and len(sub) == 2
    assert sub.report == pairs.report and sub.report is not pairs.report
    assert len(pairs.select([])) == 0
    with pytest.raises(IndexError):
        pairs.select([4])


def _synthetic_pairs(n_components: int = 300, seed: int = 0) -> PairDataset:
    """Components of 1-4 pairs (chains over fresh ids), labels mixed."""
    rng = np.random.default_rng(seed)
    rows, next_id = [], 0
    for _ in range(n_components):
        size = int(rng.integers(1, 5))
        ids = [f"q{next_id + i}" for i in range(size + 1)]
        next_id += size + 1
        for a, b in zip(ids, ids[1:], strict=False):
            rows.append(
                {
                    "text_a": f"text {a}",
                    "text_b": f"text {b}",
                    "label": int(rng.integers(0, 2)),
                    "qa": a,
                    "qb": b,
                }
            )
    # the same text under two different ids must not leak across splits either
    rows.append({"text_a": "text q0", "text_b": "other", "label": 0, "qa": "dup0", "qb": "other"})
    return load_pairs(datasets.Dataset.from_list(rows), id_a="qa", id_b="qb")


def _assert_no_leak(parts: dict[str, PairDataset]) -> None:
    seen_ids: dict[str, str] = {}
    seen_texts: dict[str, str] = {}
    for name, part in parts.items():
        for i, t in zip(*part.unique_texts(), strict=True):
            assert seen_ids.setdefault(i, name) == name, f"id {i} in {seen_ids[i]} and {name}"
            assert seen_texts.setdefault(t, name) == name, (
                f"text {t!r} in {seen_texts[t]} and {name}"
            )


def test_group_split_is_leak_free_deterministic_and_sized():
    pairs = _synthetic_pairs()
    parts = pairs.group_split(seed=0)
    assert list(parts) == ["train", "dev", "test"]
    assert sum(len(p) for p in parts.values()) == len(pairs)
    _assert_no_leak(parts)
    for name, fraction in {"train": 0.7, "dev": 0.15, "test": 0.15}.items():
        assert abs(len(parts[name]) / len(pairs) - fraction) < 0.03
    again = pairs.group_split(seed=0)
    assert all(again[k].pair_ids == parts[k].pair_ids for k in parts)
    other = pairs.group_split(seed=1)
    assert any(other[k].pair_ids != parts[k].pair_ids for k in parts)
    two = pairs.group_split({"a": 0.5, "b": 0.5}, seed=3)
    assert abs(len(two["a"]) - len(two["b"])) < 0.05 * len(pairs)


@pytest.mark.parametrize(
    "fractions, error",
    [
        ({"train": 0.7, "dev": 0.2}, "sum to 1"),
        ({"train": 1.2, "dev": -0.2}, "> 0"),
        ({}, "non-empty"),
    ],
)
def test_group_split_validates_fractions(fractions, error):
    with pytest.raises((ValueError, TypeError), match=error):
        _synthetic_pairs(10).group_split(fractions)


def test_split_from_file(tmp_path):
    pairs = load_pairs(_as_dataset(), **FIXTURE_COLUMNS)
    split_file = _write_text(
        tmp_path / "split.tsv", "id\tsplit\np1\ttrain\np2\ttrain\np3\ttrain\np4\ttest\np9\tdev\n"
    )
    assert pairs.split_from_file(split_file, "test").pair_ids == ["p4"]
    assert pairs.split_from_file(split_file, "train").pair_ids == ["p1", "p2", "p3"]
    with pytest.raises(DataError, match=r"\['train', 'test', 'dev'\]"):
        pairs.split_from_file(split_file, "validation")
    partial = _write_text(tmp_path / "partial.tsv", "id\tsplit\np1\ttrain\np2\ttest\n")
    with pytest.raises(DataError, match=r"2 of 4 pairs have no entry.*'p3', 'p4'"):
        pairs.split_from_file(partial, "train")
    conflict = _write_text(tmp_path / "conflict.tsv", "id\tsplit\np1\ttrain\np1\ttest\n")
    with pytest.raises(DataError, match="line 3"):
        pairs.split_from_file(conflict, "train")
    with pytest.raises(DataError, match="columns found"):
        pairs.split_from_file(split_file, "train", split_column="fold")


# --------------------------------------------------------------------------- presets (synthetic)


def test_preset_registry_and_argument_errors(tmp_path):
    assert list_presets() == ["grocery", "grocery-products", "mrpc", "omniglot", "orl", "paws", "qqp", "sick", "stsb"]
    with pytest.raises(ValueError, match=r"\['grocery', 'grocery-products', 'mrpc', 'omniglot', 'orl', 'paws', 'qqp', 'sick', 'stsb'\]"):
        load_preset("quora")
    with pytest.raises(ValueError, match=r"\['train', 'dev', 'test'\]"):
        load_preset("stsb", split="validation", data_dir=tmp_path)
    with pytest.raises(ValueError, match="explicit|path="):
        load_preset("paws")
    with pytest.raises(ValueError, match="low must be < high"):
        load_preset("stsb", data_dir=tmp_path, low=4.0, high=3.0)
    with pytest.raises(ValueError, match="only to score presets"):
        load_preset("qqp", data_dir=tmp_path, low=1.0)
    with pytest.raises(FileNotFoundError, match="METRIC_SIM_DATA"):
        load_preset("mrpc", data_dir=tmp_path)


def test_default_data_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("METRIC_SIM_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path.resolve()
    monkeypatch.delenv("METRIC_SIM_DATA")
    monkeypatch.chdir(tmp_path)
    assert default_data_dir() == (tmp_path / ".." / "shared" / "data").resolve()


QQP_LINES = [
    "133273\t213221\t213222\tHow is the life of a math student?\tWhich level is enough for jlpt5? 0",
    "360472\t364011\t490273\tWhat causes stool color to change?\tWhat can cause stool balls?\t0",
    '11568\t22332\t22333\t"Which is the ""best"" book?"\tWhich is the best book for tensors?\t1',
    "7\t22333\t9\tWhich is the best book for tensors?\tHow do tensors work?\t1",
]


def test_qqp_preset_drops_the_known_quirk_even_in_error_mode(tmp_path):
    folder = tmp_path / "qqp"
    folder.mkdir()
    path = _write_text(folder / "qqp_glue_train_subset.tsv", "\n".join(QQP_LINES) + "\n")
    with pytest.warns(UserWarning, match="known quirk"):
        pairs = load_preset("qqp", data_dir=tmp_path)
    assert pairs.report.bad_rows["malformed"] == 1 and pairs.report.rows_read == 4
    assert pairs.pair_ids == ["360472", "11568", "7"] and pairs.ids_a == [
        "364011",
        "22332",
        "22333",
    ]
    assert pairs.texts_a[1] == 'Which is the "best" book?'
    # another wrong-field-count row is not the quirk: it follows on_bad_row
    bad = _write_text(tmp_path / "bad.tsv", "\n".join([*QQP_LINES, "1\t2\t3\tonly four"]) + "\n")
    with pytest.raises(DataError, match=r"line 5: expected 6 fields, got 4"):
        load_preset("qqp", path=bad)
    _write_text(folder / "split.tsv", "id\tsplit\n360472\ttrain\n11568\ttest\n7\ttest\n")
    with pytest.warns(UserWarning):
        test = load_preset("qqp", path=path, split="test")
    assert test.pair_ids == ["11568", "7"]


def test_qqp_preset_reads_headered_and_kaggle_layouts(tmp_path):
    header = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
    glue = _write_text(tmp_path / "train.tsv", header + "\n".join(QQP_LINES[1:]) + "\n")
    assert load_preset("qqp", path=glue).pair_ids == ["360472", "11568", "7"]
    rows = [next(csv.reader([line], delimiter="\t")) for line in QQP_LINES[1:]]
    kaggle = _write_delimited(
        tmp_path / "train.csv", rows, delimiter=",", header=header.strip().split("\t")
    )
    pairs = load_preset("qqp", path=kaggle)
    assert pairs.texts_a[1] == 'Which is the "best" book?' and pairs.labels.tolist() == [0, 1, 1]


def test_score_preset_binarises_and_counts_middle_band(tmp_path):
    folder = tmp_path / "stsb"
    folder.mkdir()
    lines = [
        "main-captions\tMSRvid\t2012test\t0001\t5.000\tA man is dancing.\tA man dances.",
        'main-news\theadlines\t2016\t0002\t3.000\tShe said "no".\tShe refused.\tsrc1\tsrc2',
        "main-news\theadlines\t2016\t0003\t0.500\tCats sleep.\tStocks fell.",
        "main-news\theadlines\t2016\t0004\tn/a\tBroken.\tScore.",
    ]
    _write_text(folder / "sts-dev.csv", "\n".join(lines) + "\n")
    with pytest.raises(
        DataError, match=r"line 4, column 4: score must be a finite number, got 'n/a'"
    ):
        load_preset("stsb", split="dev", data_dir=tmp_path)
    with pytest.warns(UserWarning):
        pairs = load_preset("stsb", split="dev", data_dir=tmp_path, on_bad_row="skip")
    report = pairs.report
    assert (
        pairs.labels.tolist() == [1, 0]
        and report.middle_band == 1
        and report.bad_rows["bad_label"] == 1
    )
    assert report.rows_read == report.pairs + report.middle_band + sum(report.bad_rows.values())
    with pytest.warns(UserWarning):
        wide = load_preset(
            "stsb", split="dev", data_dir=tmp_path, on_bad_row="skip", low=3.0, high=4.0
        )
    assert wide.labels.tolist() == [1, 0, 0] and wide.texts_a[1] == 'She said "no".'


def test_paws_preset_with_and_without_id(tmp_path):
    with_id = _write_text(
        tmp_path / "paws.tsv", "id\tsentence1\tsentence2\tlabel\n7\ta b\tb a\t0\n9\tc\td\t1\n"
    )
    assert load_preset("paws", with_id).pair_ids == ["7", "9"]
    without = _write_text(tmp_path / "p2.tsv", "sentence1\tsentence2\tlabel\na b\tb a\t0\n")
    assert load_preset("paws", without).pair_ids == ["2"]


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def qqp() -> PairDataset:
    with pytest.warns(UserWarning, match="known quirk"):
        return load_preset("qqp", data_dir=DATA_DIR)


@requires_data
def test_real_qqp_counts(qqp):
    report = qqp.report
    assert report.rows_read == 23_497 and len(qqp) == report.pairs == 23_496
    assert report.bad_rows == {"malformed": 1, "bad_label": 0, "empty_text": 0}
    assert report.bad_row_examples[0]["line"] == 1
    assert int(qqp.labels.sum()) == 8_747
    summary = qqp.summary()
    # 8 texts appear under two qids; the cluster rule joins them, so there are 9 singletons
    # fewer than union-find over positives alone would give (28,530 and 6,797 clusters).
    assert summary["unique_texts"] == 43_954 and summary["singletons"] == 28_521
    assert summary["clusters"] == 6_798
    assert summary["largest_cluster"] == 66


@requires_data
def test_real_qqp_fixed_split(qqp):
    expected = {"train": (16_327, 6_000), "dev": (3_572, 1_350), "test": (3_597, 1_397)}
    split_file = DATA_DIR / "qqp" / "split.tsv"
    parts = {name: qqp.split_from_file(split_file, name) for name in expected}
    for name, (n, positives) in expected.items():
        assert (len(parts[name]), int(parts[name].labels.sum())) == (n, positives)
    ids = {name: set(part.unique_texts()[0]) for name, part in parts.items()}
    assert not (ids["train"] & ids["dev"] or ids["train"] & ids["test"] or ids["dev"] & ids["test"])
    with pytest.warns(UserWarning):
        test = load_preset("qqp", split="test", data_dir=DATA_DIR)
    assert test.pair_ids == parts["test"].pair_ids


@requires_data
def test_real_qqp_group_split_is_leak_free(qqp):
    parts = qqp.group_split(seed=0)
    _assert_no_leak(parts)
    for name, fraction in {"train": 0.7, "dev": 0.15, "test": 0.15}.items():
        assert abs(len(parts[name]) / len(qqp) - fraction) < 0.02
    again = qqp.group_split(seed=0)
    assert again["test"].pair_ids == parts["test"].pair_ids
    assert qqp.group_split(seed=1)["test"].pair_ids != parts["test"].pair_ids


@requires_data
@pytest.mark.parametrize("split, rows", [("train", 5_749), ("dev", 1_500), ("test", 1_379)])
def test_real_stsb(split, rows):
    pairs = load_preset("stsb", split=split, data_dir=DATA_DIR)
    report = pairs.report
    assert report.rows_read == rows
    assert report.rows_read == report.pairs + report.middle_band + sum(report.bad_rows.values())
    assert sum(report.bad_rows.values()) == 0 and report.middle_band > 0


@requires_data
@pytest.mark.parametrize("split, rows", [("train", 4_500), ("trial", 500), ("test", 4_927)])
def test_real_sick(split, rows):
    pairs = load_preset("sick", split=split, data_dir=DATA_DIR)
    report = pairs.report
    assert report.rows_read == rows
    assert report.rows_read == report.pairs + report.middle_band + sum(report.bad_rows.values())
    assert not any(t.endswith("\r") for t in pairs.texts_b)  # the test file is CRLF
    assert all(p.isdigit() for p in pairs.pair_ids)


@requires_data
@pytest.mark.parametrize(
    "split, rows, positives", [("train", 4_076, 2_753), ("test", 1_725, 1_147)]
)
def test_real_mrpc(split, rows, positives):
    pairs = load_preset("mrpc", split=split, data_dir=DATA_DIR)
    assert pairs.report.rows_read == len(pairs) == rows
    assert int(pairs.labels.sum()) == positives
    assert all(i.isdigit() for i in pairs.ids_a + pairs.ids_b)  # "#1 ID"/"#2 ID", not hashes
    assert any('"' in t for t in pairs.texts_a)  # quoting off keeps bare quotes


def test_load_report_defaults():
    report = LoadReport(source="x")
    assert report.bad_rows == dict.fromkeys(BAD_ROW_KINDS, 0) and report.middle_band == 0
