"""Strict readers: nothing merged, rewritten or dropped without a word; errors at the boundary.

One section per class of defect: lenient quoting, ambiguous columns, the QQP quirk
exemption, and exceptions that used to escape without a location.
"""

from __future__ import annotations

import gzip
import json
import random
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from metric_sim.data import DataError, load_corpus, load_pairs, load_preset
from metric_sim.errors import InvalidArgumentError, InvalidArgumentTypeError, MetricSimError

HEADER = "text_a\ttext_b\tlabel\n"


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def _rows(n: int, start: int = 0) -> str:
    return "".join(f"question {i}\tanswer {i}\t{i % 2}\n" for i in range(start, start + n))


def _load_quietly(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_pairs(path, **kwargs)


# ---------------------------------------------------------------------------- 1. quoting


def test_one_stray_quote_costs_one_counted_row_not_the_lines_after_it(tmp_path):
    # The hostile case: a quote that opens a field and runs on until the next quote,
    # 40 lines further down, used to merge all of them into one text without a word.
    text = HEADER + _rows(5) + '"stray\tanswer\t1\n' + _rows(40, 5) + '"a ""quoted"" q"\tx\t0\n'
    path = _write(tmp_path / "stray.tsv", text)
    with pytest.raises(DataError) as info:
        load_pairs(path)
    assert info.value.line == 7 and info.value.column == "text_a" and info.value.kind == "malformed"
    assert "spans lines 7-" in str(info.value)
    with pytest.warns(UserWarning, match=r"dropped 1 bad row\(s\) of 47.*line 7, column 'text_a'"):
        pairs = load_pairs(path, on_bad_row="skip")
    report = pairs.report
    assert report.pairs == 46 and report.bad_rows["malformed"] == 1 and report.rows_read == 47
    assert (
        pairs.texts_a[5:7] == ["question 5", "question 6"] and pairs.texts_a[-1] == 'a "quoted" q'
    )
    assert max(len(t) for t in pairs.texts_a) < 20  # nothing merged


@pytest.mark.parametrize("sep, suffix", [("\t", "tsv"), (",", "csv")])
def test_text_after_a_closing_quote_is_malformed(sep, suffix, tmp_path):
    text = f"text_a{sep}text_b{sep}label\n" + f'x{sep}"abc"def{sep}1\nu{sep}v{sep}0\n'
    path = _write(tmp_path / f"after.{suffix}", text)
    with pytest.raises(
        DataError, match=r"line 2, column 'text_b': text after the closing quote"
    ) as info:
        load_pairs(path)
    assert info.value.kind == "malformed"
    pairs = _load_quietly(path, on_bad_row="skip")
    assert pairs.texts_a == ["u"] and pairs.report.bad_rows["malformed"] == 1


def test_quote_inside_an_unquoted_field_is_malformed_unless_quoting_none(tmp_path):
    path = _write(tmp_path / "mid.tsv", HEADER + 'say ab"c\ty\t1\nu\tv\t0\n')
    with pytest.raises(
        DataError,
        match=r"line 2, column 'text_a': quote character inside an unquoted field.*quoting='none'",
    ):
        load_pairs(path)
    assert load_pairs(path, quoting="none").texts_a == ['say ab"c', "u"]


def test_file_cut_inside_a_quoted_field_names_the_line_and_the_span(tmp_path):
    path = _write(tmp_path / "cut.csv", 'text_a,text_b,label\nx,y,1\nu,"cut in the\nmiddle of a')
    with pytest.raises(DataError) as info:
        load_pairs(path)
    message = str(info.value)
    assert (
        info.value.line == 3 and "record spans lines 3-4" in message and "never closes" in message
    )
    assert "column 'text_b'" in message
    pairs = _load_quietly(path, on_bad_row="skip")  # line 4 is then read on its own: cut short
    assert pairs.texts_a == ["x"] and pairs.report.bad_rows["malformed"] == 2
    assert [e["line"] for e in pairs.report.bad_row_examples] == [3, 4]


def test_unclosed_quote_at_the_end_of_a_corpus_is_an_error(tmp_path):
    path = _write(tmp_path / "c.tsv", 'id\ttext\n1\tfirst\n2\t"never closed\n3\tthird\n')
    with pytest.raises(
        DataError, match=r"c\.tsv, line 3, column 'text': unclosed quote.*spans lines 3-4"
    ):
        load_corpus(path, id_column="id")
    csv_path = _write(tmp_path / "c.csv", 'id,text\n1,"ok ""quoted"""\n2,"abc"def\n')
    with pytest.raises(DataError, match=r"line 3, column 'text': text after the closing quote"):
        load_corpus(csv_path, id_column="id")


@pytest.mark.parametrize("sep, suffix", [("\t", "tsv"), (",", "csv")])
def test_a_legal_multiline_record_is_counted_and_warned_with_its_span(sep, suffix, tmp_path):
    text = (
        f"text_a{sep}text_b{sep}label\r\n"
        + f'"two\r\nlines"{sep}y{sep}1\r\nu{sep}v{sep}0\r\nw{sep}z{sep}7\r\n'
    )
    path = _write(tmp_path / f"multi.{suffix}", text)
    with pytest.raises(DataError, match=r"line 5, column 'label'"):  # line numbers stay physical
        load_pairs(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pairs = load_pairs(path, on_bad_row="skip")
    assert any(
        "1 record(s) hold a quoted line break and span several lines: lines 2-3" in str(w.message)
        for w in caught
    )
    with pytest.warns(UserWarning, match=r"hold a quoted line break.*lines 2-3"):
        load_pairs(_write(tmp_path / f"ok.{suffix}", text.replace("7\r\n", "1\r\n")))
    assert pairs.texts_a == ["two\r\nlines", "u"]  # byte-exact, CRLF inside the quotes kept
    report = pairs.report
    assert report.multiline_records == 1 and report.multiline_spans == [[2, 3]]
    assert (
        report.rows_read == 3 == report.pairs + sum(report.bad_rows.values()) + report.middle_band
    )


def test_data_check_shows_multiline_records(tmp_path, capsys):
    from metric_sim.cli import main

    path = _write(tmp_path / "multi.csv", 'text_a,text_b,label\n"two\nlines",y,1\nu,v,0\n')
    assert main(["data", "check", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["multiline_records"] == 1
    assert main(["data", "check", str(path)]) == 0
    assert "multi-line:     1 record(s)" in capsys.readouterr().out


def test_multiline_corpus_text_warns(tmp_path):
    path = _write(tmp_path / "c.csv", 'id,text\n1,"two\nlines"\n2,plain\n')
    with pytest.warns(UserWarning, match=r"1 text\(s\) hold a quoted line break.*lines 2-3"):
        corpus = load_corpus(path, id_column="id")
    assert corpus.texts == ["two\nlines", "plain"]


def test_bare_carriage_return_is_malformed_in_both_quoting_modes(tmp_path):
    path = _write(tmp_path / "cr.tsv", HEADER + "x\ry\tz\t1\nu\tv\t0\n")
    for quoting in ("csv", "none"):
        with pytest.raises(DataError, match=r"line 2, column 'text_a': carriage return"):
            load_pairs(path, quoting=quoting)


def test_gzip_follows_the_same_rules(tmp_path):
    text = HEADER + 'x\t"abc"def\t1\nu\tv\t0\n'
    path = _write(tmp_path / "g.tsv.gz", gzip.compress(text.encode()))
    with pytest.raises(DataError, match=r"g\.tsv\.gz, line 2, column 'text_b'"):
        load_pairs(path)


def test_split_file_is_read_strictly(tmp_path):
    pairs = load_pairs(
        _write(tmp_path / "p.tsv", "pair_id\ttext_a\ttext_b\tlabel\np1\tx\ty\t1\np2\tu\tv\t0\n"),
        pair_id="pair_id",
    )
    stray = _write(tmp_path / "split.tsv", 'id\tsplit\np1\t"train\np2\ttest"\n')
    with pytest.raises(DataError, match=r"split\.tsv, line 2.*one record per line"):
        pairs.split_from_file(stray, "train")
    after = _write(tmp_path / "split2.tsv", 'id\tsplit\np1\t"train"x\np2\ttest\n')
    with pytest.raises(
        DataError, match=r"line 2, column 'split': line cannot be parsed: text after"
    ):
        pairs.split_from_file(after, "train")


def test_delimiter_that_cannot_work_is_refused(tmp_path):
    path = _write(tmp_path / "d.tsv", HEADER + "x\ty\t1\n")
    with pytest.raises(InvalidArgumentError, match=r"delimiter.*got '\"'"):
        load_pairs(path, delimiter='"')


# ---------------------------------------------------------------------------- 2. columns


def test_duplicate_header_columns_are_refused(tmp_path):
    path = _write(tmp_path / "dup.tsv", "text_a\ttext_b\tlabel\tlabel\nx\ty\t1\t0\n")
    for mode in ("error", "skip"):
        with pytest.raises(
            DataError, match=r"dup\.tsv, line 1, column 'label': column 'label' appears twice"
        ):
            load_pairs(path, on_bad_row=mode)
    corpus = _write(tmp_path / "dup.csv", "text,id,text\na,1,b\n")
    with pytest.raises(DataError, match=r"line 1, column 'text': column 'text' appears twice"):
        load_corpus(corpus)
    split = _write(tmp_path / "split.tsv", "id\tsplit\tid\np1\ttrain\tp2\n")
    pairs = load_pairs(_write(tmp_path / "p.tsv", HEADER + "x\ty\t1\n"))
    with pytest.raises(DataError, match=r"line 1, column 'id': column 'id' appears twice"):
        pairs.split_from_file(split, "train")


def test_duplicate_json_keys_are_a_bad_row_naming_the_key(tmp_path):
    lines = [
        {"text_a": "x", "text_b": "y", "label": 1},
        '{"text_a": "u", "text_b": "v", "label": 1, "label": 0}',
    ]
    path = _write(
        tmp_path / "dup.jsonl",
        "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n",
    )
    with pytest.raises(DataError, match=r"line 2, column 'label': duplicate key 'label'") as info:
        load_pairs(path)
    assert info.value.kind == "malformed"
    pairs = _load_quietly(path, on_bad_row="skip")
    assert pairs.texts_a == ["x"] and pairs.report.bad_rows["malformed"] == 1
    corpus = _write(tmp_path / "c.jsonl", '{"text": "a", "text": "b"}\n')
    with pytest.raises(DataError, match=r"line 1, column 'text': duplicate key"):
        load_corpus(corpus)


def test_duplicate_parquet_columns_are_a_data_error_not_a_key_error(tmp_path):
    table = pa.Table.from_arrays(
        [pa.array(["x"]), pa.array(["y"]), pa.array([1]), pa.array([0])],
        names=["text_a", "text_b", "label", "label"],
    )
    pq.write_table(table, tmp_path / "dup.parquet")
    with pytest.raises(
        DataError, match=r"dup\.parquet, column 'label': column 'label' appears twice"
    ):
        load_pairs(tmp_path / "dup.parquet")
    with pytest.raises(DataError, match="appears twice"):
        load_corpus(tmp_path / "dup.parquet", text_column="text_a")


# ---------------------------------------------------------------------------- 3. the QQP quirk

QUIRK = (
    "133273\t213221\t213222\tHow is the life of a math student?\tWhich level is enough for jlpt5? 0"
)
GOOD = [
    "360472\t364011\t490273\tWhat causes stool color to change?\tWhat can cause stool balls?\t0",
    "7\t22333\t9\tWhich is the best book for tensors?\tHow do tensors work?\t1",
]


def _qqp(tmp_path: Path, lines: list[str]) -> Path:
    return _write(tmp_path / "qqp.tsv", "\n".join(lines) + "\n")


def test_qqp_quirk_is_exempt_only_on_the_first_line(tmp_path):
    with pytest.warns(UserWarning, match="known quirk"):
        assert len(load_preset("qqp", path=_qqp(tmp_path, [QUIRK, *GOOD]))) == 2
    with pytest.raises(DataError, match=r"line 2: expected 6 fields, got 5") as info:
        load_preset("qqp", path=_qqp(tmp_path, [GOOD[0], QUIRK, GOOD[1]]))
    assert "known quirk" not in str(info.value)


def test_qqp_quirk_needs_its_exact_shape(tmp_path):
    other_ids = QUIRK.replace("133273", "133274")
    no_label = QUIRK[: -len(" 0")]
    other_label = QUIRK[:-1] + "1"
    for first in (other_ids, no_label, other_label):
        with pytest.raises(DataError, match=r"line 1: expected 6 fields, got 5"):
            load_preset("qqp", path=_qqp(tmp_path, [first, *GOOD]))
    with pytest.warns(UserWarning, match=r"dropped 1 bad row\(s\) of 3: .*line 1") as caught:
        load_preset("qqp", path=_qqp(tmp_path, [other_ids, *GOOD]), on_bad_row="skip")
    assert not any("known quirk" in str(w.message) for w in caught)


# ---------------------------------------------------------------------------- 4. the boundary


def test_lone_surrogate_in_json_is_a_bad_row_with_its_location(tmp_path):
    path = _write(
        tmp_path / "s.jsonl",
        '{"text_a": "ok", "text_b": "y", "label": 1}\n{"text_a": "bad \\ud800", "text_b": "y", "label": 0}\n',
    )
    with pytest.raises(
        DataError, match=r"line 2, column 'text_a': string holds a lone surrogate \\ud800"
    ):
        load_pairs(path)
    assert _load_quietly(path, on_bad_row="skip").texts_a == ["ok"]
    corpus = _write(tmp_path / "c.jsonl", '{"text": "\\udfff"}\n')
    with pytest.raises(DataError, match=r"line 1, column 'text': string holds a lone surrogate"):
        load_corpus(corpus)


def test_deeply_nested_json_is_a_bad_row_not_a_recursion_error(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    path = _write(
        tmp_path / "deep.jsonl",
        '{"text_a": "x", "text_b": "y", "label": 1}\n'
        + f'{{"text_a": {deep}, "text_b": "y", "label": 1}}\n',
    )
    with pytest.raises(DataError, match=r"line 2: JSON nested too deeply"):
        load_pairs(path)
    assert len(_load_quietly(path, on_bad_row="skip")) == 1


@pytest.mark.parametrize("compression", ["none", "snappy", "zstd"])
def test_damaged_parquet_is_always_a_data_error(compression, tmp_path):
    clean = tmp_path / "ok.parquet"
    pq.write_table(
        pa.table(
            {
                "text_a": [f"text {i} " * 10 for i in range(200)],
                "text_b": [f"b{i}" for i in range(200)],
                "label": [i % 2 for i in range(200)],
            }
        ),
        clean,
        compression=compression,
    )
    raw = clean.read_bytes()
    rng = random.Random(0)
    outcomes = set()
    for case in range(40):
        data = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path = _write(tmp_path / f"m{case}.parquet", bytes(data))
        try:
            _load_quietly(path, on_bad_row="skip")
            outcomes.add("loaded")
        except DataError as err:
            assert f"m{case}.parquet" in str(err)
            outcomes.add("DataError")
    assert "DataError" in outcomes


def test_a_wrong_encoding_argument_names_the_argument(tmp_path):
    path = _write(tmp_path / "e.tsv", HEADER + "x\ty\t1\n")
    for bad in ("utf-9", "base64", "rot13"):
        with pytest.raises(
            InvalidArgumentError, match=rf"encoding must be a text encoding.*got encoding='{bad}'"
        ):
            load_pairs(path, encoding=bad)
        with pytest.raises(InvalidArgumentError, match="encoding"):
            load_corpus(_write(tmp_path / "c.txt", "a\n"), encoding=bad)
    with pytest.raises(InvalidArgumentTypeError, match="encoding must be a str"):
        load_pairs(path, encoding=8)
    assert load_pairs(path, encoding="utf-8-sig").texts_a == ["x"]


def test_every_error_is_a_metric_sim_error(tmp_path):
    # A grab bag of hostile inputs: each one is refused by name, never a traceback.
    cases = {
        "a.jsonl": b'{"text_a": "x", "text_b": "y", "label": 1}\n[1, 2]\n',
        "b.jsonl": b'{"text_a": "x", "text_b": "y", "label": 1}\n"just a string"\n',
        "c.tsv": b'text_a\ttext_b\tlabel\n"x\ty\t1\n',
        "d.csv": b'text_a,text_b,label\n"x"",y,1\n',
        "e.tsv": b'\xef\xbb\xbftext_a\ttext_b\tlabel\r\nx\t"y""\t1\r\n',
    }
    for name, data in cases.items():
        with pytest.raises(MetricSimError):
            load_pairs(_write(tmp_path / name, data))
