"""Choosing the WiSE-FT coefficient on held-out pairs (``choose_alpha``, ``select_alpha``, ``--alpha auto``).

Oracles: hand-written AP tables for the rule; for the measured figures, sklearn's
``average_precision_score`` on the distances of :func:`interpolate_model` at each alpha, each set
encoded on its own.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from metric_sim import (
    Calibrator,
    ConfigError,
    InvalidArgumentError,
    SimilarityModel,
    interpolate_model,
    load_pairs,
)
from metric_sim.cli import main
from metric_sim.interpolation import DEFAULT_ALPHAS, AlphaChoice, choose_alpha, select_alpha
from tests.conftest import DEMO_FILE
from tests.test_interpolation import perturbed


def _write_pairs(path, rows):
    path.write_text("text_a\ttext_b\tlabel\n" + "".join(f"{a}\t{b}\t{y}\n" for a, b, y in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    """In-domain: easy pairs (a question and itself plus a word, or another question) and demo pairs; guard:
    other demo pairs plus two in-domain ones (shared items). A random tiny encoder ranks them imperfectly, so
    AP moves with alpha, and separates the in-domain pairs enough to be calibrated."""
    rows = [line.split("\t") for line in DEMO_FILE.read_text(encoding="utf-8").splitlines()[1:121]]
    rows = [(a, b, int(y)) for a, b, y in rows]
    questions = list(dict.fromkeys(a for a, _, _ in rows[:40]))
    easy = [row for i, q in enumerate(questions)
            for row in ((q, f"{q} please", 1), (q, questions[(i + 7) % len(questions)], 0))]
    folder = tmp_path_factory.mktemp("sets")
    return _write_pairs(folder / "dev.tsv", easy[:40] + rows[:40]), _write_pairs(folder / "guard.tsv", rows[60:] + rows[:2])


@pytest.fixture(scope="module")
def dev_pairs(pair_files):
    return load_pairs(pair_files[0])


@pytest.fixture(scope="module")
def guard_pairs(pair_files):
    return load_pairs(pair_files[1])


@pytest.fixture()
def text_pair(tiny_encoder):
    return perturbed(tiny_encoder, seed=1, scale=0.2), tiny_encoder


def _row(alpha, in_domain, **guards):
    return {"alpha": alpha, "in_domain_ap": in_domain, "guard_ap": guards}


# ---------------------------------------------------------------------------- the rule on a table
def test_the_guard_excludes_the_high_alphas():
    table = [_row(0.0, 0.60, a=0.800), _row(0.25, 0.65, a=0.7990), _row(0.5, 0.70, a=0.7960),
             _row(0.75, 0.75, a=0.7900), _row(1.0, 0.80, a=0.7000)]
    choice = select_alpha(table, tolerance=0.005)
    assert choice.alpha == 0.5 and choice.guard_met
    assert [row["passes"] for row in choice.table] == [True, True, True, False, False]
    assert choice.guard_floor == {"a": 0.8 - 0.005}
    assert choice.in_domain_cost == 0.80 - 0.70
    assert choice.chosen == {"alpha": 0.5, "in_domain_ap": 0.70, "guard_ap": {"a": 0.796}, "passes": True}
    assert "at least the base's (alpha 0) minus 0.005" in choice.rule
    # A looser tolerance lets 0.75 through; no guard at all (tolerance 1) gives the best in-domain alpha.
    assert select_alpha(table, tolerance=0.011).alpha == 0.75
    assert select_alpha(table, tolerance=1.0).alpha == 1.0
    assert select_alpha(table, tolerance=1.0).in_domain_cost == 0.0


def test_every_guard_set_must_pass():
    table = [_row(0.0, 0.6, a=0.8, b=0.5), _row(0.5, 0.7, a=0.81, b=0.49), _row(1.0, 0.8, a=0.9, b=0.4)]
    assert select_alpha(table, tolerance=0.005).alpha == 0.0
    assert select_alpha(table, tolerance=0.01).alpha == 0.5  # b: 0.49 >= 0.5 - 0.01


def test_a_tie_goes_to_the_larger_alpha_and_input_order_does_not_matter():
    table = [_row(1.0, 0.9, a=0.1), _row(0.75, 0.7, a=0.8), _row(0.0, 0.6, a=0.8), _row(0.5, 0.7, a=0.8),
             _row(0.25, 0.7, a=0.8)]
    choice = select_alpha(table, tolerance=0.0)  # tolerance 0: equal to the base passes
    assert choice.alpha == 0.75
    assert [row["alpha"] for row in choice.table] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [row["passes"] for row in choice.table] == [True, True, True, True, False]
    # A tie with the base itself goes to the mixed model.
    assert select_alpha([_row(0.0, 0.7, a=0.8), _row(0.3, 0.7, a=0.8)], tolerance=0.0).alpha == 0.3


def test_nothing_but_the_base_passes_returns_alpha_0_flagged_with_the_cost():
    table = [_row(0.0, 0.60, a=0.8), _row(0.5, 0.72, a=0.79), _row(1.0, 0.75, a=0.7)]
    choice = select_alpha(table, tolerance=0.005)
    assert choice.alpha == 0.0 and not choice.guard_met
    assert choice.in_domain_cost == 0.75 - 0.60
    assert [row["passes"] for row in choice.table] == [True, False, False]
    # Alpha 0 chosen on its merits (best in-domain AP) is not a failed guard.
    fine = select_alpha([_row(0.0, 0.9, a=0.8), _row(1.0, 0.5, a=0.8)], tolerance=0.005)
    assert fine.alpha == 0.0 and fine.guard_met and fine.in_domain_cost == 0.0


def test_to_dict_is_json_and_a_copy():
    choice = select_alpha([_row(0.0, 0.6, a=0.8), _row(1.0, 0.7, a=0.8)])
    saved = choice.to_dict()
    assert json.loads(json.dumps(saved)) == saved
    assert saved["alpha"] == 1.0 and saved["tolerance"] == 0.005 and saved["rule"] == choice.rule
    saved["table"][0]["in_domain_ap"] = 0.0
    assert choice.table[0]["in_domain_ap"] == 0.6


@pytest.mark.parametrize("table, message", [
    ([_row(0.5, 0.6, a=0.8), _row(1.0, 0.7, a=0.8)], r"table must include alpha 0"),
    ([_row(0.0, 0.6, a=0.8), _row(0.0, 0.7, a=0.8)], r"table holds alpha 0.0 twice"),
    ([_row(0.0, 0.6, a=0.8), _row(1.0, 0.7, b=0.8)], r"table row alpha=1.0 has guard sets \['b'\], alpha 0 has \['a'\]"),
    ([_row(0.0, 0.6, a=0.8), _row(1.0, float("nan"), a=0.8)], r"table\[1\]\['in_domain_ap'\] must be a finite number"),
    ([_row(0.0, 0.6, a=0.8), _row(1.5, 0.7, a=0.8)], r"table\[1\]\['alpha'\] must be in \[0, 1\], got 1.5"),
    ([_row(0.0, 0.6)], r"table\[0\]\['guard_ap'\] must be a non-empty mapping"),
    ([{"alpha": 0.0, "guard_ap": {"a": 0.8}}], r"table\[0\] has no 'in_domain_ap'"),
    ([], r"table must include alpha 0"),
])
def test_a_bad_table_is_refused_by_name(table, message):
    with pytest.raises(InvalidArgumentError, match=message):
        select_alpha(table)


@pytest.mark.parametrize("tolerance", [-0.1, float("inf")])
def test_a_bad_tolerance_is_refused(tolerance):
    with pytest.raises(InvalidArgumentError, match=r"^tolerance must be a finite number in \[0, inf\]"):
        select_alpha([_row(0.0, 0.6, a=0.8), _row(1.0, 0.7, a=0.8)], tolerance=tolerance)


# ---------------------------------------------------------------------------- measured on tiny models
def _oracle_table(tuned, base, alphas, dev, guards, metric="euclidean"):
    """AP per alpha from interpolate_model's distances, each set encoded on its own."""
    rows = []
    for alpha in alphas:
        model = interpolate_model(SimilarityModel(tuned, metric), base, alpha)

        def ap(pairs, model=model):
            return average_precision_score(pairs.labels, -model.distance(pairs.texts_a, pairs.texts_b).astype(np.float64))

        rows.append({"alpha": alpha, "in_domain_ap": ap(dev), "guard_ap": {n: ap(p) for n, p in guards.items()}})
    return rows


@pytest.mark.parametrize("metric", ["euclidean", "manhattan"])
def test_ap_per_alpha_is_sklearn_on_the_interpolated_models_distances(text_pair, dev_pairs, guard_pairs, metric):
    tuned, base = text_pair
    guards = {"guard": guard_pairs, "dev-again": dev_pairs}
    choice = choose_alpha(SimilarityModel(tuned, metric), base, dev_pairs, guards, alphas=(1.0, 0.5, 0.25),
                          tolerance=0.01)
    assert isinstance(choice, AlphaChoice)
    oracle = _oracle_table(tuned, base, [0.0, 0.25, 0.5, 1.0], dev_pairs, guards, metric)
    assert [row["alpha"] for row in choice.table] == [0.0, 0.25, 0.5, 1.0]  # 0 added, sorted
    for got, want in zip(choice.table, oracle, strict=True):
        assert got["in_domain_ap"] == pytest.approx(want["in_domain_ap"], abs=1e-12)
        assert got["guard_ap"] == pytest.approx(want["guard_ap"], abs=1e-12)
    expected = select_alpha(oracle, tolerance=0.01)
    assert (choice.alpha, choice.guard_met) == (expected.alpha, expected.guard_met)
    # The figures differ across alphas (the test can tell alphas apart).
    assert len({round(row["in_domain_ap"], 9) for row in choice.table}) > 1


def test_the_union_of_all_sets_is_encoded_once_per_alpha(text_pair, dev_pairs, guard_pairs, monkeypatch):
    tuned, base = text_pair
    calls = []
    original = type(tuned).encode

    def counting(self, items, *args, **kwargs):
        calls.append(list(items))
        return original(self, items, *args, **kwargs)

    monkeypatch.setattr(type(tuned), "encode", counting)
    choose_alpha(SimilarityModel(tuned), base, dev_pairs, {"guard": guard_pairs}, alphas=(0.5, 1.0))
    union = set(dev_pairs.texts_a) | set(dev_pairs.texts_b) | set(guard_pairs.texts_a) | set(guard_pairs.texts_b)
    assert len(calls) == 3  # alphas 0, 0.5, 1
    assert all(len(items) == len(set(items)) == len(union) and set(items) == union for items in calls)


def test_default_alphas_and_bad_arguments(text_pair, dev_pairs, guard_pairs):
    tuned, base = text_pair
    assert DEFAULT_ALPHAS == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    model = SimilarityModel(tuned)
    with pytest.raises(InvalidArgumentError, match=r"alphas must hold at least one value above 0"):
        choose_alpha(model, base, dev_pairs, {"g": guard_pairs}, alphas=[0])
    with pytest.raises(InvalidArgumentError, match=r"alphas\[1\] must be in \[0, 1\], got 2"):
        choose_alpha(model, base, dev_pairs, {"g": guard_pairs}, alphas=[0.5, 2])
    with pytest.raises(InvalidArgumentError, match=r"guard_sets must be a non-empty mapping"):
        choose_alpha(model, base, dev_pairs, {})
    one_class = dev_pairs.select(np.flatnonzero(dev_pairs.labels == 1))
    with pytest.raises(InvalidArgumentError, match=r"guard_sets\['g'\] holds \d+ pairs of 1 class"):
        choose_alpha(model, base, dev_pairs, {"g": one_class})
    with pytest.raises(InvalidArgumentError, match=r"^tolerance must be a finite number in \[0, inf\], got -1"):
        choose_alpha(model, base, dev_pairs, {"g": guard_pairs}, tolerance=-1)


# ---------------------------------------------------------------------------- CLI
@pytest.fixture()
def run_folder(tiny_encoder, tmp_path):
    """A run whose train_config.json names a saved starting folder (the real default model is not used in tests).
    With these weights the guard rules out alpha 1 at tolerance 0.04 and an alpha in between wins."""
    tuned, base = tiny_encoder, perturbed(tiny_encoder, seed=6, scale=0.2)
    base_dir = base.save(tmp_path / "start")
    run = tmp_path / "run"
    SimilarityModel(tuned, "euclidean", Calibrator(weight=-2.0, bias=3.0, metric="euclidean")).save(run / "model")
    (run / "train_config.json").write_text(json.dumps({"model": str(base_dir), "seed": 7, "encoder_options": {},
                                                       "run": {"status": "done"}}))
    return run, tuned, base


@pytest.fixture()
def fake_presets(monkeypatch, dev_pairs, guard_pairs):
    """qqp -> the in-domain pairs, stsb -> the guard pairs; records what was asked."""
    import metric_sim.data

    asked = []

    def fake_load_preset(name, path=None, *, split=None, **kwargs):
        asked.append((name, split))
        return {"qqp": dev_pairs, "stsb": guard_pairs}[name]

    monkeypatch.setattr(metric_sim.data, "load_preset", fake_load_preset)
    return asked


def test_cli_auto_writes_the_chosen_alpha_the_table_and_a_plot(run_folder, fake_presets, dev_pairs, guard_pairs,
                                                               pair_files, tmp_path, capsys):
    from PIL import Image

    run, tuned, base = run_folder
    out, plot = tmp_path / "wise", tmp_path / "plots" / "tradeoff.png"
    assert main(["interpolate", "--model", str(run), "--alpha", "auto", "--select-on", "qqp", "--guard", "stsb",
                 "--alphas", "0.25", "0.5", "0.75", "1", "--tolerance", "0.04", "--out", str(out), "--plot", str(plot)]) == 0
    printed = capsys.readouterr().out
    assert fake_presets == [("qqp", "dev"), ("stsb", "dev")]
    expected = select_alpha(_oracle_table(tuned, base, [0.0, 0.25, 0.5, 0.75, 1.0], dev_pairs,
                                          {"stsb:dev": guard_pairs}), tolerance=0.04)
    # The guard mattered: it ruled out the alpha with the best in-domain AP, and a mixed model won.
    assert expected.in_domain_cost > 0 and 0 < expected.alpha < 1
    model = SimilarityModel.from_pretrained(out)
    record = model.weight_interpolation
    assert record["alpha"] == expected.alpha
    selection = record["selection"]
    assert selection["select_on"] == "qqp:dev" and selection["alpha"] == expected.alpha
    assert [row["alpha"] for row in selection["table"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [row["passes"] for row in selection["table"]] == [row["passes"] for row in expected.table]
    assert selection["guard_floor"] == pytest.approx(expected.guard_floor, abs=1e-12)
    assert selection["rule"] == expected.rule and selection["tolerance"] == 0.04
    # Calibrated on the --select-on pairs (no --calibrate), with the chosen weights.
    oracle = interpolate_model(SimilarityModel(tuned), base, expected.alpha, dev_pairs).calibrator
    assert (model.calibrator.weight, model.calibrator.bias) == (oracle.weight, oracle.bias)
    assert "split 'dev' of preset 'qqp'" in model.calibrator.fitted_on
    assert "stsb:dev" in printed and "<- chosen" in printed and "rule: among the alphas" in printed
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size[0] > 100
    # A pairs file as the guard, a separate --calibrate split, --json.
    assert main(["interpolate", "--model", str(run), "--alpha", "auto", "--select-on", "qqp:train",
                 "--guard", str(pair_files[1]), "--calibrate", "qqp:test", "--alphas", "1", "--out", str(out),
                 "--overwrite", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert fake_presets[-2:] == [("qqp", "test"), ("qqp", "train")]
    assert list(result["weight_interpolation"]["selection"]["guard_floor"]) == ["guard.tsv"]  # no local path
    assert "split 'test' of preset 'qqp'" in SimilarityModel.from_pretrained(out).calibrator.fitted_on
    assert result["plot"] is None


def test_cli_auto_errors_exit_2(run_folder, fake_presets, tmp_path, pair_files, capsys):
    run = run_folder[0]
    one_class = _write_pairs(tmp_path / "one.tsv", [("a", "a b", 1), ("c", "c d", 1)])

    def fails(*args: str) -> str:
        assert main(["interpolate", "--model", str(run), "--out", str(tmp_path / "out"), *args]) == 2
        return capsys.readouterr().err

    assert "--alpha auto needs --select-on" in fails("--alpha", "auto", "--guard", "stsb")
    assert "--alpha auto needs --select-on" in fails("--alpha", "auto", "--select-on", "qqp")
    assert "--guard is for --alpha auto" in fails("--alpha", "0.5", "--guard", "stsb")
    assert "--plot is for --alpha auto" in fails("--alpha", "0.5", "--plot", str(tmp_path / "p.png"))
    err = fails("--alpha", "auto", "--select-on", "mrpc", "--guard", "stsb")
    assert "--select-on mrpc: preset 'mrpc' has no 'dev' split (its splits: ['train', 'test'])" in err
    assert "--guard paws: preset 'paws' has no 'dev' split (it has no splits)" in fails(
        "--alpha", "auto", "--select-on", "qqp", "--guard", "paws")
    assert "--guard 'nosuch' is neither a preset" in fails("--alpha", "auto", "--select-on", "qqp", "--guard", "nosuch")
    assert "holds only class [1]" in fails("--alpha", "auto", "--select-on", "qqp", "--guard", str(one_class))
    assert "names the set 'qqp:dev' twice" in fails("--alpha", "auto", "--select-on", "qqp", "--guard", "qqp:dev")
    assert "--alphas must hold a value above 0" in fails("--alpha", "auto", "--select-on", "qqp", "--guard", "stsb",
                                                         "--alphas", "0")
    assert "--alphas must be in [0, 1], got 1.5" in fails("--alpha", "auto", "--select-on", "qqp", "--guard", "stsb",
                                                          "--alphas", "1.5")
    assert "--tolerance must be a finite number >= 0" in fails("--alpha", "auto", "--select-on", "qqp", "--guard",
                                                               "stsb", "--tolerance", "-0.1")
    assert "invalid float value: 'half'" in fails("--alpha", "half")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- the saved record
def _saved_with(tiny_encoder, tmp_path, record):
    folder = SimilarityModel(tiny_encoder).save(tmp_path / "model")
    config = json.loads((folder / "metric_sim.json").read_text())
    (folder / "metric_sim.json").write_text(json.dumps({**config, "weight_interpolation": record}))
    return folder


def _record(**selection_changes):
    choice = select_alpha([_row(0.0, 0.6, g=0.8), _row(0.5, 0.7, g=0.8)])
    selection = {"select_on": "qqp:dev", **choice.to_dict(), **selection_changes}
    return {"alpha": 0.5, "base": "default", "base_fingerprint": "ab", "kept_from_finetuned": [], "selection": selection}


def test_a_recorded_selection_loads_and_older_records_still_do(tiny_encoder, tmp_path):
    record = _record()
    assert SimilarityModel.from_pretrained(_saved_with(tiny_encoder, tmp_path / "a", record)).weight_interpolation == record
    old = {"alpha": 0.5, "base": "default", "base_fingerprint": "ab"}
    assert SimilarityModel.from_pretrained(_saved_with(tiny_encoder, tmp_path / "b", old)).weight_interpolation == old


@pytest.mark.parametrize("changes, field", [
    ({"alpha": 0.0}, r"weight_interpolation.selection.alpha must be the recorded alpha 0.5"),
    ({"table": [{"alpha": 0.0, "in_domain_ap": 0.6, "guard_ap": {"g": 0.8}, "passes": True}]},
     r"weight_interpolation.selection.alpha must be the recorded alpha 0.5, one of the table's alphas \[0.0\]"),
    ({"table": [{"alpha": "0", "in_domain_ap": 0.6, "guard_ap": {"g": 0.8}, "passes": True}]},
     r"weight_interpolation.selection.table\[0\].alpha must be"),
    ({"table": [{"alpha": 0.5, "in_domain_ap": 0.6, "guard_ap": {"h": 0.8}, "passes": True}]},
     r"weight_interpolation.selection.table\[0\].guard_ap must map the guard sets \['g'\]"),
    ({"guard_met": "yes"}, r"weight_interpolation.selection.guard_met must be"),
    ({"rule": ""}, r"weight_interpolation.selection.rule must not be empty"),
])
def test_a_damaged_selection_is_a_config_error_naming_the_field(tiny_encoder, tmp_path, changes, field):
    with pytest.raises(ConfigError, match=rf"metric_sim.json: {field}"):
        SimilarityModel.from_pretrained(_saved_with(tiny_encoder, tmp_path, _record(**changes)))
