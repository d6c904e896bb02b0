"""The forgetting benchmark's summary: the issue's bars computed from synthetic per-seed figures."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import forgetting  # noqa: E402

SETS = ("qqp:test", "stsb:test", "mrpc:test")


def _figures(aps: dict[str, float], ece: float = 0.01) -> dict[str, dict[str, float]]:
    return {name: {"average_precision": ap, "roc_auc": ap, "accuracy": 0.8, "best_accuracy_in_sample": 0.81,
                   "ece": ece} for name, ap in aps.items()}


def _cell(method: str, seed: int, qqp: float, stsb: float, mrpc: float, ece: float = 0.01) -> dict:
    cell = {"method": method, "seed": seed, "figures": _figures({"qqp:test": qqp, "stsb:test": stsb, "mrpc:test": mrpc}, ece)}
    if method == "wiseft":
        cell["alpha_choice"] = {"alpha": 0.7, "guard_met": True}
    return cell


@pytest.fixture
def args() -> argparse.Namespace:
    return argparse.Namespace(also=["stsb:test", "mrpc:test"], mix="stsb:train:0.25")


def test_bars_follow_the_issue_tolerances(args):
    base = {"figures": _figures({"qqp:test": 0.77, "stsb:test": 0.91, "mrpc:test": 0.84})}
    cells = {
        # fine-tune: 0.84 in domain, loses 0.012 on MRPC (beyond the 0.005 tolerance)
        "finetune": [_cell("finetune", 0, 0.84, 0.93, 0.828), _cell("finetune", 1, 0.84, 0.93, 0.828)],
        # WiSE-FT: 0.004 below the fine-tune in domain (inside), MRPC 0.004 below zero-shot (inside)
        "wiseft": [_cell("wiseft", 0, 0.836, 0.925, 0.836), _cell("wiseft", 1, 0.836, 0.925, 0.836)],
        # freeze: 0.006 below the fine-tune in domain (outside)
        "freeze": [_cell("freeze", 0, 0.834, 0.93, 0.84), _cell("freeze", 1, 0.834, 0.93, 0.84)],
        # mix: trained on STS-B, so a loss there is not out-of-domain forgetting; ECE too high
        "mix": [_cell("mix", 0, 0.84, 0.80, 0.84, ece=0.03), _cell("mix", 1, 0.84, 0.80, 0.84, ece=0.03)],
    }
    summary = forgetting.summarize(cells, base, args)
    assert summary["finetune"]["sets"]["mrpc:test"]["delta_vs_zero_shot"] == pytest.approx(-0.012)
    assert summary["finetune"]["bars"]["out_of_domain_within_0.005_of_zero_shot"] == {"stsb:test": True, "mrpc:test": False}
    assert not summary["finetune"]["meets_all"]
    assert summary["wiseft"]["meets_all"] and summary["wiseft"]["alphas"] == [0.7, 0.7]
    assert summary["freeze"]["bars"]["in_domain_within_0.005_of_finetune"] is False
    assert summary["mix"]["bars"]["trained_on"] == "stsb"
    assert "stsb:test" not in summary["mix"]["bars"]["out_of_domain_within_0.005_of_zero_shot"]
    assert summary["mix"]["bars"]["qqp_ece_at_most_0.02"] is False and not summary["mix"]["meets_all"]
    table = forgetting.markdown(summary, base, {k: v for k, v in cells.items() if k != "wiseft"}, args)
    assert "(trained on)" in table and "| finetune | 0 1 | 0.8400 ± 0.0000 (+0.0700)" in table


def test_guard_on_a_test_split_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        forgetting.main(["--work", "/nonexistent", "--guard", "stsb:test"])
    assert exc.value.code == 2
    assert "never on a test split" in capsys.readouterr().err
