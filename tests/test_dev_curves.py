"""benchmarks/dev_curves.py: the curves read from quality.py's tuning records, and the figure."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import dev_curves  # noqa: E402


def _folder(path: Path, steps: int, tuning: dict) -> Path:
    path.mkdir()
    (path / "tuning.json").write_text(json.dumps(tuning))
    (path / "budget.json").write_text(json.dumps({"task": "qqp", "steps": steps}))
    return path


def _cell(lr: float, curves: list, factor: float | None = None) -> dict:
    cell = {"learning_rate": lr, "dev_curve": curves}
    if factor is not None:
        cell["margin_factor"] = factor
    return cell


def test_curves_of_every_grid_cell_and_seed_earlier_grids_included_each_cell_once(tmp_path):
    one = _folder(tmp_path / "one_epoch", 511, {
        "ms_x": {"grid": {"0.0001": _cell(1e-4, [[[100, 0.80], [511, 0.84]], [[100, 0.81], [511, 0.83]]]),
                          "5e-05@m2": _cell(5e-5, [[[100, 0.79], [511, 0.82]]], factor=2.0)},
                 "earlier": [{"grid": {"0.0001": _cell(1e-4, [[[100, 0.0], [511, 0.0]]]),  # the same cell again
                                       "2e-05": _cell(2e-5, [[[100, 0.70], [511, 0.75]]])}}]},
        "st_y": {"grid": {"0.0001": _cell(1e-4, [[[100, 0.78]]])}},
    })
    three = _folder(tmp_path / "three_epochs", 1533, {
        "ms_x": {"grid": {"0.0001": _cell(1e-4, [[[500, 0.845], [800, 0.848], [1533, 0.846]]]),
                          "old": {"learning_rate": 5e-5}}},  # a record made before curves were kept
    })
    curves = dev_curves.read_curves([one, three], ["ms_x"])
    assert [(Path(c.folder).name, c.learning_rate, c.margin_factor, c.seed_index, c.budget_steps) for c in curves] == [
        ("one_epoch", 1e-4, 1.0, 0, 511), ("one_epoch", 1e-4, 1.0, 1, 511), ("one_epoch", 5e-5, 2.0, 0, 511),
        ("one_epoch", 2e-5, 1.0, 0, 511), ("three_epochs", 1e-4, 1.0, 0, 1533)]
    assert curves[1].points == ((100, 0.81), (511, 0.83)) and curves[-1].points[1] == (800, 0.848)
    assert curves[2].label == "ms_x lr 5e-05 x2, 511 steps (one_epoch)"
    assert len(dev_curves.read_curves([one])) == 5  # every system: 4 of ms_x, 1 of st_y
    assert {(c.system, c.learning_rate) for c in dev_curves.read_curves([one, three], learning_rates=[1e-4])} == {
        ("ms_x", 1e-4), ("st_y", 1e-4)}


def test_the_figure_is_written_and_bad_folders_are_named(tmp_path, capsys):
    folder = _folder(tmp_path / "w", 511, {"ms_x": {"grid": {"0.0001": _cell(1e-4, [[[100, 0.80], [511, 0.84]]])}}})
    png = tmp_path / "curves.png"
    assert dev_curves.main(["--work", str(folder), "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "best dev AP 0.8400 at step 511" in capsys.readouterr().out
    for argv, message in ([["--work", str(tmp_path)], "tuning.json: no tuning record"],
                          [["--work", str(folder), "--systems", "st_nope"], "no tuning record of ['st_nope']"]):
        with pytest.raises(SystemExit):
            dev_curves.main([*argv, "--png", str(png)])
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="no dev curves"):
        dev_curves.plot_curves([], png)
