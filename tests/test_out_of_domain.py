"""Forgetting: ``evaluate --also`` and ``out_of_domain_report``, the fine-tuned model against its zero-shot base."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from metric_sim.calibration import CalibrationError, Calibrator
from metric_sim.cli import main
from metric_sim.data import load_pairs
from metric_sim.errors import InvalidArgumentError
from metric_sim.evaluation import load_base_model, out_of_domain_report
from metric_sim.model import SimilarityModel
from tests.conftest import BASE_WORDS, build_tiny_encoder
from tests.test_evaluation import write_pairs

COLUMNS = ["--text-a", "q1", "--text-b", "q2", "--label", "dup"]
TABLE_HEADER = "| set | pairs | AP base | AP fine-tuned | delta AP | ECE base | ECE fine-tuned |"


def _sentences(seed: int, groups: int, length: int) -> list[tuple[str, str, int]]:
    """Groups of (base, light edit, 1), (base, heavy edit, 0), (base, another group's base, 0):
    hard enough that the two random encoders rank them differently."""
    rng = np.random.default_rng(seed)
    words = list(dict.fromkeys(BASE_WORDS))
    bases = [[str(w) for w in rng.choice(words, length)] for _ in range(groups)]
    rows = []
    for g, base in enumerate(bases):
        light, heavy = list(base), list(base)
        for i in rng.choice(length, length // 3, replace=False):
            light[i] = str(rng.choice(words))
        for i in rng.choice(length, length // 2, replace=False):
            heavy[i] = str(rng.choice(words))
        a = " ".join(base)
        rows += [(a, " ".join(light), 1), (a, " ".join(heavy), 0), (a, " ".join(bases[(g + 1) % groups]), 0)]
    return rows


def _write_set(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    path.write_text("q1\tq2\tdup\n" + "".join(f"{a}\t{b}\t{y}\n" for a, b, y in rows), encoding="utf-8")
    return path


def _load(path: Path):
    return load_pairs(path, text_a="q1", text_b="q2", label="dup")


@pytest.fixture()
def sets(tmp_path):
    """In-domain (pairs + split file) and two other sets of other sentence lengths; the second
    repeats two pairs of the first, one of them in the other order, so they share texts."""
    pairs_file, split_file = write_pairs(tmp_path)
    first = _sentences(1, 10, 5)
    second = _sentences(2, 8, 11) + [first[0], (first[2][1], first[2][0], first[2][2])]
    return {
        "pairs": pairs_file,
        "split": split_file,
        "a": _write_set(tmp_path / "short.tsv", first),
        "b": _write_set(tmp_path / "long.tsv", second),
    }


def _dev(sets):
    return _load(sets["pairs"]).split_from_file(sets["split"], "dev")


def _ece(labels: np.ndarray, probabilities: np.ndarray, bins: int = 15) -> float:
    """ECE oracle with sklearn's calibration_curve binning (equal width, edges to the lower bin)."""
    ids = np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], probabilities)
    total = 0.0
    for b in np.unique(ids):
        inside = ids == b
        total += inside.sum() / labels.size * abs(labels[inside].mean() - probabilities[inside].mean())
    return total


# ---------------------------------------------------------------------------- library
def test_figures_equal_sklearn_on_distances_computed_directly(tiny_encoder, sets):
    from sklearn.metrics import average_precision_score, roc_auc_score

    tuned = SimilarityModel(build_tiny_encoder(seed=1), "manhattan")
    base = SimilarityModel(tiny_encoder, "manhattan")
    dev = _dev(sets)
    data = {"short": _load(sets["a"]), "long": _load(sets["b"])}
    report = out_of_domain_report(tuned, base, data, calibration_pairs=dev, calibration_name="dev", batch_size=5)
    assert list(report) == ["base_model", "short", "long"]
    assert tuned.calibrator is None and base.calibrator is None  # the models are not changed
    for role, model in (("model", tuned), ("base", base)):
        calibrator = Calibrator.fit(model.distance(dev.texts_a, dev.texts_b), dev.labels, "manhattan")
        key = "model_calibrator" if role == "model" else "calibrator"
        assert report["base_model"][key]["weight"] == pytest.approx(calibrator.weight, rel=1e-9)
        for name, pairs in data.items():
            d = model.distance(pairs.texts_a, pairs.texts_b)
            y = pairs.labels
            got = report[name][role]
            assert got["average_precision"] == pytest.approx(average_precision_score(y, -d), abs=1e-12)
            assert got["roc_auc"] == pytest.approx(roc_auc_score(y, -d), abs=1e-12)
            assert got["ece"] == pytest.approx(_ece(y, calibrator.predict_proba(d)), abs=1e-9)
            assert got["accuracy"] == pytest.approx(np.mean((d <= calibrator.threshold) == y), abs=1e-12)
            assert got["threshold"] == pytest.approx(calibrator.threshold, rel=1e-9)
    for name, pairs in data.items():
        entry = report[name]
        assert (entry["pairs"], entry["positives"]) == (len(pairs), int(pairs.labels.sum()))
        for key in ("average_precision", "roc_auc", "ece", "accuracy"):
            assert entry["delta"][key] == entry["model"][key] - entry["base"][key]
    # The two encoders really differ, so the deltas are not trivially zero.
    assert any(report[n]["delta"]["average_precision"] != 0.0 for n in data)


def test_each_distinct_text_is_encoded_once_per_model(tiny_encoder, sets):
    dev = _dev(sets)
    tuned = SimilarityModel(build_tiny_encoder(seed=1))
    base = SimilarityModel(tiny_encoder)
    tuned.calibrate(dev)
    base.calibrate(dev)
    calls: dict[str, list[list[str]]] = {"model": [], "base": []}
    for role, model in (("model", tuned), ("base", base)):
        original = model.encoder.encode

        def recording(items, *args, _role=role, _original=original, **kwargs):
            calls[_role].append(list(items))
            return _original(items, *args, **kwargs)

        model.encoder.encode = recording
    data = {"short": _load(sets["a"]), "long": _load(sets["b"])}
    out_of_domain_report(tuned, base, data)  # calibrators attached: nothing else is encoded
    union = {t for p in data.values() for t in (*p.texts_a, *p.texts_b)}
    for role in ("model", "base"):
        encoded = [t for call in calls[role] for t in call]
        assert len(encoded) == len(set(encoded)) == len(union) and set(encoded) == union, role


def test_a_model_against_itself_gives_exactly_zero_deltas(tiny_encoder, sets):
    model = SimilarityModel(tiny_encoder)
    data = {"short": _load(sets["a"]), "long": _load(sets["b"])}
    report = out_of_domain_report(model, model, data, calibration_pairs=_dev(sets))
    for name in data:
        assert report[name]["delta"] == {"average_precision": 0.0, "roc_auc": 0.0, "ece": 0.0, "accuracy": 0.0}
        assert report[name]["model"] == report[name]["base"]


def test_one_class_set_and_missing_calibrator_are_refused(tiny_encoder, sets, tmp_path):
    model = SimilarityModel(tiny_encoder)
    only_similar = _load(_write_set(tmp_path / "ones.tsv", [r for r in _sentences(3, 4, 6) if r[2] == 1]))
    with pytest.raises(InvalidArgumentError, match=r"set 'ones' .*only class 1 \(4 pairs\)"):
        out_of_domain_report(model, model, {"short": _load(sets["a"]), "ones": only_similar}, calibration_pairs=_dev(sets))
    with pytest.raises(CalibrationError, match="the model has no calibrator"):
        out_of_domain_report(model, model, {"short": _load(sets["a"])})


def test_load_base_model_from_the_run_record_or_base(tiny_encoder, sets, tmp_path):
    base_dir = SimilarityModel(tiny_encoder).save(tmp_path / "base")
    run = tmp_path / "run"
    tuned_dir = SimilarityModel(build_tiny_encoder(seed=1), "manhattan").save(run / "model")
    texts = _load(sets["a"]).texts_a[:6]
    expected = tiny_encoder.encode(texts)
    with pytest.raises(InvalidArgumentError, match="pass --base NAME_OR_PATH"):
        load_base_model(run, SimilarityModel.from_pretrained(run))
    (run / "train_config.json").write_text(json.dumps({"model": str(base_dir), "max_length": 32, "normalize": None}))
    for path in (run, tuned_dir):  # the run folder, or its model/
        base, info = load_base_model(path, SimilarityModel.from_pretrained(path))
        assert info["source"] == str(base_dir) and "train_config.json" in info["chosen_by"]
        assert base.metric.value == "manhattan" and base.calibrator is None
        assert np.array_equal(base.embed(texts), expected)
    base, info = load_base_model(run, SimilarityModel.from_pretrained(run), base=str(tuned_dir))  # --base wins
    assert info == {"source": str(tuned_dir), "chosen_by": "given by --base"}
    assert not np.array_equal(base.embed(texts), expected)


# ---------------------------------------------------------------------------- CLI
def _write_stsb(data_dir: Path) -> None:
    """A tiny STS-B test file (tab-separated, 7 columns, score in column 4) under DATA/stsb."""
    rows = _sentences(4, 6, 7)
    folder = data_dir / "stsb"
    folder.mkdir(parents=True)
    lines = [f"main-news\theadlines\t2016\t{i:04d}\t{4.6 if y else 1.0:.3f}\t{a}\t{b}" for i, (a, b, y) in enumerate(rows)]
    (folder / "sts-test.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _run_dir(tmp_path: Path, base_encoder) -> tuple[Path, Path]:
    base_dir = SimilarityModel(base_encoder).save(tmp_path / "base")
    run = tmp_path / "run"
    SimilarityModel(build_tiny_encoder(seed=1)).save(run / "model")
    (run / "train_config.json").write_text(json.dumps({"model": str(base_dir), "max_length": 32}))
    return run, base_dir


def test_cli_also_writes_the_section_to_metrics_and_report(tiny_encoder, sets, tmp_path, capsys, monkeypatch):
    from sklearn.metrics import average_precision_score

    monkeypatch.setenv("METRIC_SIM_DATA", str(tmp_path / "data"))
    _write_stsb(tmp_path / "data")
    run, base_dir = _run_dir(tmp_path, tiny_encoder)
    report = tmp_path / "report"
    args = ["evaluate", "--model", str(run), "--data", str(sets["pairs"]), *COLUMNS, "--split-file", str(sets["split"]),
            "--split", "test", "--calibrate-on", "dev", "--also", str(sets["a"]), "stsb", "--report", str(report),
            "--batch-size", "16", "--json"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    payload = json.loads((report / "metrics.json").read_text())
    assert printed == payload
    section = payload["out_of_domain"]
    assert list(section) == ["base_model", str(sets["a"]), "stsb:test"]
    assert section["base_model"]["source"] == str(base_dir) and str(run / "train_config.json") in section["base_model"]["chosen_by"]
    # The fine-tuned model's figures use the evaluation's own calibrator; the base's is fitted on the same dev split.
    assert section["base_model"]["model_calibrator"]["weight"] == payload["models"]["model"]["calibrator"]["weight"]
    assert "split 'dev'" in section["base_model"]["calibrator"]["fitted_on"]
    tuned, base = SimilarityModel.from_pretrained(run), SimilarityModel.from_pretrained(base_dir)
    sts = section["stsb:test"]
    assert (sts["pairs"], sts["positives"], sts["in_domain_pairs"]) == (18, 6, 0)
    short = _load(sets["a"])
    for role, model in (("model", tuned), ("base", base)):
        d = model.distance(short.texts_a, short.texts_b)
        assert section[str(sets["a"])][role]["average_precision"] == pytest.approx(average_precision_score(short.labels, -d), abs=1e-12)
    md = (report / "report.md").read_text()
    assert "## Out-of-domain: forgetting" in md and TABLE_HEADER in md
    for name, s in section.items():
        if name != "base_model":
            row = (f"| `{name}` | {s['pairs']:,} | {s['base']['average_precision']:.4f} | {s['model']['average_precision']:.4f} | "
                   f"{s['delta']['average_precision']:+.4f} | {s['base']['ece']:.4f} | {s['model']['ece']:.4f} |")
            assert row in md
    assert "> **Warning:**" not in md[md.index("## Out-of-domain"):]


def test_cli_also_with_base_and_stored_calibrator_prints_one_line_per_set(tiny_encoder, sets, tmp_path, capsys):
    tuned_dir = SimilarityModel(build_tiny_encoder(seed=1)).save(tmp_path / "tuned")  # no run record
    base_dir = SimilarityModel(tiny_encoder).save(tmp_path / "base")
    source = ["--data", str(sets["pairs"]), *COLUMNS, "--split-file", str(sets["split"])]
    # A linear stored calibrator (never a fallback form): the base's must be fitted in that form too.
    assert main(["calibrate", "--model", str(tuned_dir), *source, "--split", "dev", "--feature", "linear", "--json"]) == 0
    capsys.readouterr()
    report = tmp_path / "report"
    assert main(["evaluate", "--model", str(tuned_dir), *source, "--split", "test", "--also", str(sets["a"]), str(sets["b"]),
                 "--base", str(base_dir), "--report", str(report), "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    section = json.loads((report / "metrics.json").read_text())["out_of_domain"]
    lines = [line.strip() for line in out.splitlines() if "pairs): AP " in line]
    assert len(lines) == 2
    for line, name in zip(lines, (str(sets["a"]), str(sets["b"])), strict=True):
        s = section[name]
        assert line.startswith(f"{name} ({s['pairs']:,} pairs): AP {s['base']['average_precision']:.4f} -> "
                               f"{s['model']['average_precision']:.4f} ({s['delta']['average_precision']:+.4f})")
    assert section["base_model"]["chosen_by"] == "given by --base"
    # Stored calibrator for the model; the base's is fitted on the scored in-domain split, never on an --also set.
    assert section["base_model"]["model_calibrator"]["origin"].startswith("stored with the model")
    test = _load(sets["pairs"]).split_from_file(sets["split"], "test")
    base = SimilarityModel.from_pretrained(base_dir)
    ref = Calibrator.fit(base.distance(test.texts_a, test.texts_b), test.labels, "euclidean", feature="linear")
    assert section["base_model"]["model_calibrator"]["feature"] == section["base_model"]["calibrator"]["feature"] == "linear"
    assert section["base_model"]["calibrator"]["weight"] == pytest.approx(ref.weight, rel=1e-9)
    assert "split 'test'" in section["base_model"]["calibrator"]["origin"]


@pytest.mark.parametrize(
    ("also", "message"),
    [
        (["nope"], "--also 'nope' is neither a preset"),
        (["stsb:nope"], "--also 'stsb:nope': split of preset 'stsb' must be one of ['train', 'dev', 'test']"),
        (["paws"], "--also 'paws': "),
        (["BAD"], "--also 'BAD': "),
        (["ONES"], "set 'ONES' "),
        (["SHORT", "SHORT"], "--also names the set 'SHORT' twice"),
    ],
)
def test_cli_bad_also_values_exit_2_naming_the_value(tiny_encoder, sets, tmp_path, capsys, also, message):
    bad = tmp_path / "bad.tsv"
    bad.write_text("first\tsecond\tlabel\nx\ty\t1\n", encoding="utf-8")  # not the q1/q2/dup columns
    ones = _write_set(tmp_path / "ones.tsv", [r for r in _sentences(3, 4, 6) if r[2] == 1])
    names = {"BAD": str(bad), "ONES": str(ones), "SHORT": str(sets["a"])}
    also = [names.get(v, v) for v in also]
    message = message.replace("BAD", str(bad)).replace("ONES", str(ones)).replace("SHORT", str(sets["a"]))
    run, _ = _run_dir(tmp_path, tiny_encoder)
    code = main(["evaluate", "--model", str(run), "--data", str(sets["pairs"]), *COLUMNS, "--split-file", str(sets["split"]),
                 "--split", "test", "--calibrate-on", "dev", "--also", *also, "--report", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_cli_unknown_base_and_base_without_also_exit_2(tiny_encoder, sets, tmp_path, capsys):
    model_dir = SimilarityModel(tiny_encoder).save(tmp_path / "model")  # a model folder, no run record
    common = ["evaluate", "--model", str(model_dir), "--data", str(sets["pairs"]), *COLUMNS, "--split-file",
              str(sets["split"]), "--split", "test", "--calibrate-on", "dev", "--report", str(tmp_path / "r")]
    assert main([*common, "--also", str(sets["a"])]) == 2
    err = capsys.readouterr().err
    assert "zero-shot base model" in err and "pass --base NAME_OR_PATH" in err and "Traceback" not in err
    assert main([*common, "--base", "default"]) == 2
    assert "--base 'default' is the zero-shot model for --also" in capsys.readouterr().err
    assert not (tmp_path / "r" / "metrics.json").exists()
