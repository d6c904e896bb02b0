"""The evaluation report: ``metrics.json``, ``report.md`` and the PNG figures of one or more evaluations.

:func:`write_report` turns evaluations (the model, then a baseline) into the report
folder; :func:`evaluate_and_report` scores and writes in one call.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from metric_sim.calibration import DEFAULT_FEATURE
from metric_sim.errors import CalibrationError, InvalidArgumentError
from metric_sim.evaluation.examples import example_rows, pair_line
from metric_sim.evaluation.figures import FIGURES, write_figures
from metric_sim.evaluation.neighbours import write_neighbour_grid
from metric_sim.evaluation.out_of_domain import (
    BASE_MODEL_KEY,
    check_out_of_domain_sets,
    out_of_domain_markdown,
    out_of_domain_report,
)
from metric_sim.evaluation.scoring import Evaluation, describe_split, evaluate
from metric_sim.metrics import IN_SAMPLE_NOTE
from metric_sim.model import SimilarityModel
from metric_sim.storage import atomic_file, package_versions

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# The libraries whose versions metrics.json records, under these (distribution) names.
REPORT_PACKAGES = ("metric-sim", "torch", "transformers", "scikit-learn", "pytorch-metric-learning", "matplotlib")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines


def _report_markdown(payload: dict[str, Any], evaluations: Sequence[Evaluation], examples: list[str]) -> str:
    data = payload["data"]
    split = data["split"]
    main = evaluations[0]
    m = main.metrics
    names = [ev.name for ev in evaluations]
    lines = [f"# Evaluation report: {main.source}", ""]
    lines += [
        f"Scored on **{data['pairs']:,} pairs** ({data['positives']:,} similar) of `{data['source']}`, split **{split}**. "
        f"The decision is `similar when d(a, b) <= tau`, with `tau` and `p(similar | d) = {main.calibrator.formula}` from a "
        f"logistic calibrator {main.calibrator_origin}.",
        "",
        f"- At tau = {main.calibrator.threshold:.4f} the model is right on **{m['pairs']['accuracy']:.1%}** of the pairs "
        f"(F1 {m['pairs']['f1']:.4f}); ranking by distance gives AP {m['pairs']['average_precision']:.4f}, "
        f"ROC-AUC {m['pairs']['roc_auc']:.4f}.",
        f"- Its probabilities are off by {m['calibration']['ece']:.4f} on average (expected calibration error, "
        f"{m['calibration']['n_bins']} bins).",
        f"- Symmetry: the largest |p(a,b) - p(b,a)| over the {m['symmetry']['pairs']:,} pairs is "
        f"**{m['symmetry']['max_abs_difference']!r}** (bit-for-bit equal: {m['symmetry']['bitwise_equal']}).",
        "",
        "## Setup",
        "",
    ]
    setup_rows = [[ev.name, f"`{ev.source}`", ev.metric.value, f"{ev.calibrator.threshold:.4f}", f"{ev.calibrator.weight:.4f}",
                   f"{ev.calibrator.bias:.4f}", f"{float(ev.calibrator.predict_proba([0.0])[0]):.4f}", ev.calibrator_origin] for ev in evaluations]
    lines += _table(["", "model", "metric", "tau", "w", "b", "p(d=0), the maximum", "calibrator"], setup_rows)
    lines += ["", f"Data: `{data['source']}`" + (f", split file `{data['split_file']}`" if data.get("split_file") else "")
              + (f"; calibration split **{data['calibration_split']}** ({data['calibration_pairs']:,} pairs)" if data.get("calibration_split") else ""), ""]
    for warning in payload["warnings"]:
        lines += [f"> **Warning:** {warning}", ""]

    lines += ["## Pair classification", "", "Threshold-free ranking quality, then the decisions at the calibrated tau:", ""]
    keys = [("average precision", "average_precision"), ("ROC-AUC", "roc_auc"), ("accuracy at tau", "accuracy"),
            ("F1 at tau", "f1"), ("precision at tau", "precision"), ("recall at tau", "recall")]
    rows = [[label] + [ev.metrics["pairs"][key] for ev in evaluations] for label, key in keys]
    rows += [[f"{label} (in-sample best)"] + [ev.metrics["pairs"]["in_sample"][key] for ev in evaluations]
             for label, key in (("accuracy", "accuracy"), ("F1", "f1"))]
    rows += [[f"{label} (in-sample)"] + [ev.metrics["pairs"]["in_sample"][key] for ev in evaluations]
             for label, key in (("accuracy threshold", "accuracy_threshold"), ("F1 threshold", "f1_threshold"))]
    lines += _table(["metric"] + names, rows)
    lines += ["", f"*In-sample* rows: {IN_SAMPLE_NOTE}. The gap between them and the rows at tau is what choosing the "
              "threshold on held-out data costs. Note that tau is the p = 0.5 point, which aims at accuracy; the best-F1 "
              "threshold usually lies elsewhere (on QQP at a larger distance, trading precision for recall), so F1 at tau "
              "trails the in-sample F1 by more than accuracy does.", ""]
    lines += ["### Distances", "", f"![distance histograms]({FIGURES['distance_histograms']})", "",
              "Each panel shows how far apart similar (blue) and dissimilar (orange) pairs are; the dashed line is tau. "
              "The less the two humps overlap, the better one threshold works.", ""]
    lines += ["### ROC and precision-recall", "", f"![ROC and precision-recall curves]({FIGURES['roc_pr']})", "",
              "The dots mark the operating point of the calibrated threshold on each curve.", ""]

    lines += ["## Calibration", "", "Do the probabilities mean what they say? Lower is better for all three.", ""]
    rows = [[label] + [ev.metrics["calibration"][key] for ev in evaluations]
            for label, key in (("expected calibration error", "ece"), ("Brier score", "brier"), ("log-loss", "log_loss"),
                               ("mean predicted p", "mean_probability"), ("fraction similar", "fraction_similar"))]
    lines += _table(["metric"] + names, rows)
    lines += ["", f"![reliability diagram]({FIGURES['reliability']})", "",
              "Points on the dotted diagonal are perfectly calibrated: among pairs given p = 0.8, 80 % are similar. "
              "The lower panel shows how many pairs fall in each bin.", ""]

    if "retrieval" in m:
        r = m["retrieval"]
        lines += ["## Retrieval", "",
                  f"Each of the {r['queries']:,} texts that have a duplicate in this split looks for its duplicates among all "
                  f"the other {r['gallery'] - 1:,} distinct texts of the split, ranked by raw distance. Relevant = same duplicate cluster "
                  "(union-find over the similar pairs). Recall@k: at least one duplicate in the top k; MRR@10: 1/rank of the "
                  "first duplicate; mAP@R: average precision within the first R results, R = number of duplicates.", ""]
        keys = [k for k in r if k.startswith(("recall_at_", "mrr_at_"))] + ["map_at_r"]
        pretty = {k: k.replace("recall_at_", "Recall@").replace("mrr_at_", "MRR@").replace("map_at_r", "mAP@R") for k in keys}
        lines += _table(["metric"] + names, [[pretty[k]] + [ev.metrics.get("retrieval", {}).get(k) for ev in evaluations] for k in keys])
        lines += [""]

    lines += ["## Symmetry", "",
              "The probability depends on the pair only through d(a, b) = d(b, a), so swapping the texts cannot change it. "
              "Every pair was scored again as (b, a) through `predict_proba`:", ""]
    lines += _table(["", "max abs(p(a,b) - p(b,a))", "bit-for-bit equal", "pairs"],
                    [[ev.name, repr(ev.metrics["symmetry"]["max_abs_difference"]), str(ev.metrics["symmetry"]["bitwise_equal"]),
                      ev.metrics["symmetry"]["pairs"]] for ev in evaluations])
    lines += [""]
    if payload.get("out_of_domain"):
        lines += out_of_domain_markdown(payload["out_of_domain"])
    if examples:
        lines += ["## Example pairs", "", "Typical similar (label=1) and dissimilar (label=0) pairs, with both orders:", "", "```"]
        lines += examples + ["```", ""]

    lines += ["## Closing note", ""]
    for ev in evaluations:
        p, c = ev.metrics["pairs"], ev.metrics["calibration"]
        lines.append(
            f"- **{ev.name}** (`{ev.source}`): AP {p['average_precision']:.4f}, ROC-AUC {p['roc_auc']:.4f}, "
            f"accuracy {p['accuracy']:.4f} and F1 {p['f1']:.4f} at tau = {ev.calibrator.threshold:.4f} "
            f"(in-sample best: accuracy {p['in_sample']['accuracy']:.4f}, F1 {p['in_sample']['f1']:.4f}); "
            f"ECE {c['ece']:.4f}; symmetry {ev.metrics['symmetry']['max_abs_difference']!r}."
        )
    extra = {name: file for name, file in payload["figures"].items() if file not in FIGURES.values()}
    for name, file in extra.items():
        lines += ["", f"### {name.replace('_', ' ').capitalize()}", "", f"![{name}]({file})"]
    files = [*FIGURES.values(), *extra.values()]
    lines += ["", "Files: `metrics.json` (all numbers), " + ", ".join(f"`{f}`" for f in files) + ".", ""]
    return "\n".join(lines)


def write_report(
    directory: str | os.PathLike[str],
    evaluations: Sequence[Evaluation],
    *,
    data: dict[str, Any],
    examples: list[str] | None = None,
    extra_figures: dict[str, str] | None = None,
    out_of_domain: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json``, ``report.md`` and the PNG figures; return the metrics payload.

    ``out_of_domain`` (what :func:`~metric_sim.evaluation.out_of_domain.out_of_domain_report`
    returns) becomes ``metrics.json``'s ``out_of_domain`` and a table in the report.

    ``extra_figures`` (name -> file in ``directory``) are pictures written by the caller,
    listed and shown in the report after the standard ones.

    ``evaluations[0]`` is the model; later ones (a baseline) are drawn beside it.
    ``data`` describes the scored split: at least ``source``, ``split``, ``pairs``, ``positives``.
    """
    if not evaluations:
        raise InvalidArgumentError("write_report needs at least one Evaluation")
    missing = [k for k in ("source", "split", "pairs", "positives") if k not in data]
    if missing:
        raise InvalidArgumentError(f"data is missing {missing}; got keys {sorted(data)}")
    names = [ev.name for ev in evaluations]
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"evaluation names must be distinct, got {names}")
    out = Path(directory).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    split = str(data["split"])
    figures = {**write_figures(evaluations, split, out), **(extra_figures or {})}
    payload = {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "data": data,
        "models": {ev.name: ev.to_dict() for ev in evaluations},
        "figures": figures,
        "warnings": [w for ev in evaluations for w in ev.metrics.get("warnings", [])],
        "versions": package_versions(REPORT_PACKAGES),
    }
    if out_of_domain is not None:
        payload["out_of_domain"] = out_of_domain
    with atomic_file(out / "metrics.json") as tmp:
        # Insertion order: the model before its baseline, summary before detail.
        tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    with atomic_file(out / "report.md") as tmp:
        tmp.write_text(_report_markdown(payload, evaluations, examples or []), encoding="utf-8")
    return payload


def _report_examples(ev: Evaluation, pairs: Any, limit: int = 6) -> list[str]:
    """Example lines from the arrays already computed (both orders came from predict_proba)."""
    texts_a, texts_b = pairs.texts_a, pairs.texts_b
    rows = example_rows(ev.labels, ev.probabilities, limit)
    return [
        pair_line(texts_a[i], texts_b[i], float(ev.probabilities[i]), float(ev.probabilities_reversed[i]),
                   float(ev.distances[i]), int(ev.labels[i]), 60)
        for i in rows
    ]


def evaluate_and_report(
    model: SimilarityModel,
    pairs: Any,
    report_dir: str | os.PathLike[str],
    *,
    split: str = "all",
    calibration_pairs: Any = None,
    calibration_split: str | None = None,
    calibration_feature: str = DEFAULT_FEATURE,
    baseline: SimilarityModel | None = None,
    baseline_name: str = "baseline",
    data: dict[str, Any] | None = None,
    batch_size: int = 64,
    show_progress: bool = False,
    out_of_domain: Mapping[str, Any] | None = None,
    base_model: SimilarityModel | None = None,
    base_info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` (and ``baseline``, calibrated the same way) and write the report.

    With ``calibration_pairs``, every calibrator of the report is fitted on them in the
    form ``calibration_feature``; without, the models' stored calibrators are used.

    ``out_of_domain`` (set name -> ``PairDataset``) adds the forgetting section: both
    ``model`` and ``base_model`` (its zero-shot start) scored on each set; see
    :func:`_out_of_domain_section` for how each is calibrated.
    """
    if out_of_domain is not None:
        if base_model is None:
            raise InvalidArgumentError("out_of_domain sets need base_model, the zero-shot model the fine-tune started from")
        check_out_of_domain_sets(out_of_domain)
    if baseline is not None and calibration_pairs is None and baseline.calibrator is None:
        raise CalibrationError(
            "the baseline has no stored calibrator: give calibration pairs (--calibrate-on SPLIT) so it gets one like the model"
        )
    calibration_name = describe_split(calibration_pairs, calibration_split) if calibration_pairs is not None else None
    common = dict(calibration_pairs=calibration_pairs, calibration_name=calibration_name, calibration_feature=calibration_feature,
                  batch_size=batch_size, show_progress=show_progress)
    evaluations = [evaluate(model, pairs, name="model", **common)]
    if baseline is not None:
        evaluations.append(evaluate(baseline, pairs, name=baseline_name, **common))
    info = {
        "source": pairs.report.source,
        "split": split,
        "pairs": len(pairs),
        "positives": int(pairs.labels.sum()),
        "calibration_split": calibration_split if calibration_pairs is not None else None,
        "calibration_pairs": len(calibration_pairs) if calibration_pairs is not None else None,
        **(data or {}),
    }
    out = Path(report_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    section = None
    if out_of_domain is not None and base_model is not None:  # both or neither, checked above
        section = _out_of_domain_section(evaluations[0], model, base_model, out_of_domain, pairs, split, calibration_pairs,
                                         calibration_name, calibration_feature, base_info, batch_size, show_progress)
    grid = write_neighbour_grid(model, pairs, out, batch_size=batch_size)  # images and products only
    return write_report(out, evaluations, data=info, examples=_report_examples(evaluations[0], pairs),
                        extra_figures={"neighbours": grid.name} if grid is not None else None, out_of_domain=section)


def _out_of_domain_section(main: Evaluation, model: SimilarityModel, base_model: SimilarityModel,
                           datasets: Mapping[str, Any], pairs: Any, split: str, calibration_pairs: Any,
                           calibration_name: str | None, calibration_feature: str, base_info: Mapping[str, Any] | None,
                           batch_size: int, show_progress: bool) -> dict[str, Any]:
    """The forgetting section, each model calibrated as ``evaluate`` calibrates.

    The rule: the fine-tuned model keeps the calibrator of the main evaluation (fitted on
    the calibration split, else the one stored with it). The base gets its own, fitted on
    in-domain pairs the evaluation uses: the same calibration split, in the form
    ``calibration_feature``, when there is one; else the scored split (the base has no
    calibrator for this data of its own), in the form of the model's stored calibrator. The
    out-of-domain sets never fit either; ``in_domain_pairs`` counts what a set shares with
    the in-domain pairs, and the report warns when that is not 0.
    """
    if calibration_pairs is not None:
        base_pairs, base_fit_name, base_feature = calibration_pairs, calibration_name, calibration_feature
    else:
        base_pairs, base_fit_name = pairs, describe_split(pairs, split if split != "all" else None)
        base_feature = main.calibrator.feature
    logger.info("out-of-domain: fitting the base model's calibrator on %s", base_fit_name)
    base_calibrator = base_model.fit_calibrator(base_pairs, fitted_on=base_fit_name, batch_size=batch_size,
                                                show_progress=show_progress, feature=base_feature)
    section = out_of_domain_report(
        SimilarityModel(model.encoder, main.metric, main.calibrator),
        SimilarityModel(base_model.encoder, base_model.metric, base_calibrator),
        datasets, base_info=base_info, batch_size=batch_size, show_progress=show_progress,
    )
    section[BASE_MODEL_KEY]["model_calibrator"]["origin"] = main.calibrator_origin
    section[BASE_MODEL_KEY]["calibrator"]["origin"] = f"fitted on {base_fit_name} for this report"
    # A set that repeats in-domain pairs is not out of domain there: say how many it shares.
    in_domain = {frozenset(p) for d in (pairs, calibration_pairs) if d is not None for p in zip(d.texts_a, d.texts_b, strict=True)}
    for name, other in datasets.items():
        section[name]["in_domain_pairs"] = sum(frozenset(p) in in_domain for p in zip(other.texts_a, other.texts_b, strict=True))
    return section
