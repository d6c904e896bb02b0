"""Is a test ECE above the target a calibration fault, or the sampling noise of the figure?

``quality.py`` scores each distance row with the library ``Calibrator`` fitted on dev (feature
``d**2``) and reports the binned ECE of its test probabilities. This reads the same cached rows
of a ``--work`` folder and, for each, puts that ECE next to three references:

* **floor**: the ECE that perfectly calibrated probabilities score on as many pairs
  (``metric_sim.ece_sampling_floor``: labels drawn from the row's own test probabilities), mean
  and 95th percentile. A test ECE inside it is no evidence of miscalibration.
* **fitted on test**: the same calibrator family fitted on the test pairs themselves, the lowest
  ECE its two parameters reach there (optimistic: in-sample). If the dev-fitted ECE is close to it,
  the miss is the family's shape, not the dev-to-test transfer.
* **other forms**: the calibrator on ``d`` instead of ``d**2`` (``linear``) and on both
  (``quadratic``), each fitted on dev, with the 5-fold log-loss of every form on dev and the
  form that rule picks: the held-out choice that never looks at test.

    PYTHONPATH=$PWD python benchmarks/calibration_floor.py --task qqp --work runs/bench/qqp_mpnet \\
        --json benchmarks/results_calibration_floor_qqp_mpnet.json \\
        --markdown benchmarks/results_calibration_floor_qqp_mpnet.md

Only cached outputs are read: nothing is trained or encoded.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, markdown_table, write_outputs  # noqa: E402
from quality_data import TASKS, Store, load_task  # noqa: E402

from metric_sim import Calibrator, ece_sampling_floor, expected_calibration_error  # noqa: E402
from metric_sim.calibration import (  # noqa: E402
    DEFAULT_FEATURE,
    FEATURES,
    SELECTION_FOLDS,
    choose_feature,
    cross_validated_log_losses,
)

logger = logging.getLogger("calibration_floor")


def floor_row(arrays: dict[str, np.ndarray], metric: str, dev_labels: np.ndarray, test_labels: np.ndarray,
              draws: int = 1000) -> dict[str, Any]:
    """The test ECE of one row's dev-fitted calibrator and its three references (see the module doc)."""
    dev, test = arrays["dev"], arrays["test"]
    # Each form fitted on dev once; the default form's probabilities also give the floor.
    probabilities = {feature: Calibrator.fit(dev, dev_labels, metric, fitted_on="dev", feature=feature).predict_proba(test)
                     for feature in FEATURES}
    ece_by_feature = {feature: expected_calibration_error(test_labels, p) for feature, p in probabilities.items()}
    floor = ece_sampling_floor(probabilities[DEFAULT_FEATURE], draws=draws)
    on_test = Calibrator.fit(test, test_labels, metric, fitted_on="test")
    # The rule of Calibrator.fit(feature="auto"), on dev.
    log_loss = cross_validated_log_losses(dev, dev_labels, metric)
    dev_choice = choose_feature(log_loss)
    return {"ece": ece_by_feature[DEFAULT_FEATURE],
            "floor_mean": floor["mean"], "floor_p95": floor["p95"], "floor_draws": floor["draws"],
            "ece_fitted_on_test": expected_calibration_error(test_labels, on_test.predict_proba(test)),
            "ece_linear": ece_by_feature["linear"], "ece_quadratic": ece_by_feature["quadratic"],
            "dev_cv_log_loss": log_loss, "dev_choice": dev_choice, "ece_dev_choice": ece_by_feature[dev_choice]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="qqp")
    parser.add_argument("--work", type=Path, required=True, help="a quality.py --work folder with cached outputs")
    parser.add_argument("--rows", nargs="+", default=None, metavar="ROW",
                        help="row names in WORK/outputs (default: every distance row)")
    parser.add_argument("--draws", type=int, default=1000, help="label draws for the sampling floor")
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.draws < 1:
        parser.error(f"--draws must be a positive integer, got {args.draws}")
    outputs = args.work / "outputs"
    if not outputs.is_dir():
        parser.error(f"--work {args.work}: no outputs/ folder (run quality.py with this --work first)")
    store = Store(args.work)
    available = store.rows()
    missing = sorted(set(args.rows or ()) - set(available))
    if missing:
        parser.error(f"--rows: {', '.join(missing)} not in {outputs} (it holds {', '.join(available) or 'nothing'})")
    task = load_task(args.task)  # only the labels are read; they do not depend on the base model
    dev_labels, test_labels = task.dev.labels.astype(np.int64), task.test.labels.astype(np.int64)
    results: dict[str, Any] = {}
    for row in args.rows or available:
        arrays, meta = store.load(row)
        if meta.get("kind") != "distance":
            if args.rows:
                parser.error(f"--rows: {row} holds {meta.get('kind')} outputs, not distances")
            continue
        results[row] = {"label": meta.get("label", row), **floor_row(arrays, meta["metric"], dev_labels, test_labels,
                                                                      draws=args.draws)}
        logger.info("%s: test ECE %.4f, floor %.4f (p95 %.4f)", row, results[row]["ece"],
                    results[row]["floor_mean"], results[row]["floor_p95"])
    if not results:
        parser.error(f"{outputs} holds no distance rows")
    header = ["row", "test ECE (dev fit, d^2)", "floor mean (p95)", "ECE fitted on test", "ECE, linear (d)",
              "ECE, quadratic (d^2 + d)", "dev 5-fold log-loss d^2 / d / d^2 + d", "dev's choice: test ECE"]
    table = markdown_table(header, [
        [row, f"{r['ece']:.4f}", f"{r['floor_mean']:.4f} ({r['floor_p95']:.4f})", f"{r['ece_fitted_on_test']:.4f}",
         f"{r['ece_linear']:.4f}", f"{r['ece_quadratic']:.4f}",
         " / ".join(f"{r['dev_cv_log_loss'][feature]:.5f}" for feature in FEATURES),
         f"{r['dev_choice']}: {r['ece_dev_choice']:.4f}"]
        for row, r in results.items()])
    print(table)
    write_outputs(args.json, {"task": task.name, "work": str(args.work), "pairs": {"dev": len(task.dev), "test": len(task.test)},
                              "folds": SELECTION_FOLDS, "environment": environment(), "results": results},
                  args.markdown, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
