from __future__ import annotations

import json

import pytest

from metric_sim.cli import main
from tests.conftest import DATA_DIR, requires_data


def _write(path, text, mode="w"):
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_data_check_json_counts(tmp_path, capsys):
    f = _write(tmp_path / "p.tsv", "q1\tq2\tdup\na b\tc d\t1\nc d\te f\t0\na b\tg h\t1\n")
    assert main(["data", "check", str(f), "--text-a", "q1", "--text-b", "q2", "--label", "dup", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["pairs"], summary["positives"], summary["negatives"]) == (3, 2, 1)
    assert summary["unique_texts"] == 4 and summary["clusters"] == 1  # {a b, c d, g h} joined by positives


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"q1\tq2\tdup\na\tb\t1\nc\td\t2\n", "line 3, column 'dup'"),
        (b"q1\tq2\tdup\na\tb\t1\n\xff\xfe\td\t0\n", "line 3"),
        (b"q1\tq2\tdup\na\tb\t1\nc\t\t0\n", "line 3"),
        (b"q1\tq2\tdup\na\tb\t1\nc\td", "truncated"),
    ],
)
def test_data_check_bad_input_exits_2_naming_file_and_line(tmp_path, capsys, content, expected):
    f = _write(tmp_path / "bad.tsv", content, "wb")
    code = main(["data", "check", str(f), "--text-a", "q1", "--text-b", "q2", "--label", "dup"])
    err = capsys.readouterr().err
    assert code == 2
    assert "bad.tsv" in err and expected in err
    assert "Traceback" not in err


def test_data_check_missing_column_lists_found(tmp_path, capsys):
    f = _write(tmp_path / "p.tsv", "q1\tq2\tdup\na\tb\t1\n")
    assert main(["data", "check", str(f), "--text-a", "q1", "--text-b", "nope", "--label", "dup"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "q1" in err and "dup" in err


def test_data_check_skip_mode_counts(tmp_path, capsys):
    f = _write(tmp_path / "p.tsv", "q1\tq2\tdup\na\tb\t1\nc\td\t2\ne\t \t0\nx\ty\t0\n")
    args = ["data", "check", str(f), "--text-a", "q1", "--text-b", "q2", "--label", "dup", "--on-bad-row", "skip", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pairs"] == 2
    assert summary["bad_rows"]["bad_label"] == 1 and summary["bad_rows"]["empty_text"] == 1


def test_unknown_preset_and_usage_errors(tmp_path, capsys):
    f = _write(tmp_path / "p.tsv", "a\tb\tc\n")
    assert main(["data", "check", str(f), "--preset", "nosuch"]) == 2
    assert "qqp" in capsys.readouterr().err
    assert main(["data", "check", str(tmp_path / "missing.tsv"), "--preset", "qqp"]) == 2
    assert main(["no-such-command"]) == 2


@requires_data
def test_data_check_real_qqp(capsys):
    path = DATA_DIR / "qqp" / "qqp_glue_train_subset.tsv"
    assert main(["data", "check", str(path), "--preset", "qqp", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pairs"] == 23_496 and summary["positives"] == 8_747
    assert summary["bad_rows"]["malformed"] == 1


@requires_data
def test_data_check_corrupted_qqp_copy_exits_2(tmp_path, capsys):
    lines = (DATA_DIR / "qqp" / "qqp_glue_train_subset.tsv").read_bytes().split(b"\n")
    lines[500] = lines[500][:40]  # a row cut short in the middle of the file
    corrupted = _write(tmp_path / "qqp_corrupt.tsv", b"\n".join(lines), "wb")
    assert main(["data", "check", str(corrupted), "--preset", "qqp"]) == 2
    err = capsys.readouterr().err
    assert "qqp_corrupt.tsv" in err and "line 501" in err and "Traceback" not in err


@pytest.mark.slow
def test_quickstart_runs_and_reports_both_metrics(tmp_path, capsys):
    assert main(["quickstart", "--out", str(tmp_path / "qs")]) == 0
    out = capsys.readouterr().out
    assert "zero-shot average precision (euclidean)" in out and "(manhattan)" in out
    result = json.loads((tmp_path / "qs" / "quickstart.json").read_text())
    assert 0.5 < result["zero_shot_ap"]["euclidean"] <= 1.0
