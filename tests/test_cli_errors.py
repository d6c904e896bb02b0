"""The CLI's contract: exit 2 for the user's mistakes, 1 for bugs, a quiet start, a light import."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

import metric_sim.cli.data as data_command
from metric_sim.calibration import SimilarityModel
from metric_sim.cli import main
from metric_sim.errors import DataError, InvalidArgumentError
from tests.conftest import REPO_ROOT, build_tiny_encoder

INTERNAL_HINT = "(rerun with -v for the traceback)"


@pytest.fixture()
def pairs_file(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("q1\tq2\tdup\na b\tc d\t1\nc d\te f\t0\n", encoding="utf-8")
    return path


def _data_check(pairs_file, *flags):
    return [*flags, "data", "check", str(pairs_file), "--text-a", "q1", "--text-b", "q2", "--label", "dup"]


def test_bad_argument_value_exits_2_with_the_message(tmp_path, pairs_file, capsys):
    args = ["evaluate", "--model", str(tmp_path / "m"), "--data", str(pairs_file), "--text-a", "q1", "--text-b", "q2",
            "--label", "dup", "--batch-size", "0", "--report", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "metric-sim: error: --batch-size must be a positive integer, got 0" in err
    assert "Traceback" not in err and "internal error" not in err


def test_argparse_errors_exit_2(capsys):
    """argparse's own messages, unchanged: usage, then ``PROG: error: MESSAGE`` (PROG names the subcommand)."""
    assert main(["query"]) == 2
    assert "metric-sim query: error: the following arguments are required: index_dir, texts" in capsys.readouterr().err
    assert main(["query", "idx", "text", "-k", "many"]) == 2
    assert "metric-sim query: error: argument -k: invalid int value: 'many'" in capsys.readouterr().err
    assert main(["no-such-command"]) == 2
    assert "metric-sim: error: argument command: invalid choice: 'no-such-command'" in capsys.readouterr().err


@pytest.mark.parametrize("error", [DataError("p.tsv, line 3: bad row"), InvalidArgumentError("k must be positive")])
def test_every_metric_sim_error_exits_2(pairs_file, capsys, monkeypatch, error):
    def raise_it(args):
        raise error

    monkeypatch.setattr(data_command, "cmd_data_check", raise_it)
    assert main(_data_check(pairs_file)) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"metric-sim: error: {error}"


@pytest.mark.parametrize("error", [RuntimeError("boom"), ValueError("boom"), TypeError("boom"), FileNotFoundError("boom")])
def test_an_unexpected_exception_exits_1_with_one_line(pairs_file, capsys, monkeypatch, error):
    """A plain ValueError/TypeError is a bug inside metric-sim, not the user's mistake: exit 1, not 2."""

    def crash(args):
        raise error

    monkeypatch.setattr(data_command, "cmd_data_check", crash)
    assert main(_data_check(pairs_file)) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"metric-sim: internal error: {type(error).__name__}: boom {INTERNAL_HINT}"]
    assert "Traceback" not in captured.err + captured.out


def test_an_unexpected_exception_message_stays_on_one_line(pairs_file, capsys, monkeypatch):
    def crash(args):
        raise RuntimeError("first\nsecond")

    monkeypatch.setattr(data_command, "cmd_data_check", crash)
    assert main(_data_check(pairs_file)) == 1
    assert capsys.readouterr().err.splitlines() == [f"metric-sim: internal error: RuntimeError: first second {INTERNAL_HINT}"]


def test_verbose_prints_the_traceback_of_an_unexpected_exception(pairs_file, capsys, monkeypatch):
    def crash(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(data_command, "cmd_data_check", crash)
    assert main(_data_check(pairs_file, "-v")) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'raise RuntimeError("boom")' in err
    assert err.strip().splitlines()[-1] == "metric-sim: internal error: RuntimeError: boom"


def test_main_restores_the_callers_logging(pairs_file, capsys):
    root = logging.getLogger()
    package = logging.getLogger("metric_sim")
    before = (root.level, package.level, list(root.handlers))
    assert main(_data_check(pairs_file, "-v")) == 0
    assert main(_data_check(pairs_file)) == 0
    assert (root.level, package.level, list(root.handlers)) == before


def test_index_commands_do_not_print_third_party_info_lines(tmp_path, capsys):
    """faiss logs its loader lines at INFO; only metric-sim's own INFO lines reach stderr (all of them with -v)."""
    model_dir = tmp_path / "model"
    SimilarityModel(build_tiny_encoder(), "euclidean").save(model_dir)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("how do i learn python\nwhat is the best way to learn python\nhow do i cook rice\n", encoding="utf-8")
    index_dir = tmp_path / "idx"
    assert main(["index", "build", "--model", str(model_dir), "--corpus", str(corpus), "--out", str(index_dir)]) == 0
    capsys.readouterr()

    def query(*flags: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "metric_sim", *flags, "query", str(index_dir), "learn python", "-k", "2"]
        return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)

    quiet = query()
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "learn python" in quiet.stdout
    assert "Loading faiss" not in quiet.stderr and "faiss.loader" not in quiet.stderr, quiet.stderr
    assert " INFO " not in quiet.stderr.replace(" INFO metric_sim", ""), quiet.stderr  # no third-party INFO at all
    verbose = query("-v")
    assert verbose.returncode == 0, verbose.stderr[-2000:]
    assert "faiss.loader" in verbose.stderr  # -v shows them: the quiet run above is quiet by configuration


def test_importing_the_cli_loads_no_heavy_library():
    script = (
        "import sys; import metric_sim.cli; "
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'faiss', 'sklearn', 'matplotlib') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
