"""The fair-peer margin grid of benchmarks/quality.py: the joint (lr, margin factor) choice, the
cell names (old ones kept at factor 1), the factor reaching both systems' losses, and the CLI.

No training: ``train`` / ``train_sentence_transformers`` are replaced by stubs that record what
they were given and stop.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import MemoryRowStore

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import fair_peers  # noqa: E402
import quality  # noqa: E402
import quality_grid  # noqa: E402


# ----------------------------------------------------------------------------- the choice
def test_choose_over_lr_and_factor_takes_the_highest_complete_mean():
    table = {(5e-5, 0.5): {0: 0.80, 1: 0.82}, (5e-5, 1.0): {0: 0.81, 1: 0.80},
             (5e-5, 1.5): {0: 0.85, 1: 0.83}, (1e-4, 1.5): {0: 0.95, 1: None}}
    # (1e-4, 1.5) has the best cell but a missing seed: it does not compete
    assert fair_peers.choose_lr(table) == (5e-5, 1.5)
    assert fair_peers.choose_lr({**table, (1e-4, 2.0): {0: 0.9, 1: float("nan")}}) == (5e-5, 1.5)
    assert fair_peers.choose_lr(table, seeds=[0]) == (1e-4, 1.5)  # selection on seed 0 only: complete there
    assert fair_peers.choose_lr({(5e-5, 0.5): {0: 0.9}}, seeds=[0, 1]) is None


def test_ties_go_to_factor_one_then_the_smaller_lr():
    # 0.80 + 0.82 and 0.81 + 0.81: a tie up to float summation order
    tie = {0: 0.80, 1: 0.82}
    same = {0: 0.81, 1: 0.81}
    assert fair_peers.choose_lr({(5e-5, 1.5): tie, (5e-5, 1.0): same}) == (5e-5, 1.0)
    # factor 1 wins before the smaller lr does
    assert fair_peers.choose_lr({(2e-5, 0.5): tie, (1e-4, 1.0): same}) == (1e-4, 1.0)
    assert fair_peers.choose_lr({(1e-4, 1.0): tie, (2e-5, 1.0): same}) == (2e-5, 1.0)
    # neither at factor 1: the smaller lr, then the factor nearer 1 (log scale), then the smaller factor
    assert fair_peers.choose_lr({(1e-4, 1.5): tie, (2e-5, 0.5): same}) == (2e-5, 0.5)
    assert fair_peers.choose_lr({(5e-5, 0.5): tie, (5e-5, 1.5): same}) == (5e-5, 1.5)
    assert fair_peers.choose_lr({(5e-5, 2.0): tie, (5e-5, 0.5): same}) == (5e-5, 0.5)
    # a real difference beats every tie rule
    assert fair_peers.choose_lr({(1e-4, 2.0): {0: 0.82, 1: 0.82}, (2e-5, 1.0): same}) == (1e-4, 2.0)


def test_grid_summary_and_table_with_margin_factors():
    table = {(5e-5, 1.5): {0: 0.85}, (5e-5, 1.0): {0: 0.81}, (2e-5, 1.0): {0: 0.70}, (5e-5, 0.5): {0: None}}
    summary = fair_peers.grid_summary(table, [0])
    assert list(summary) == ["2e-05", "5e-05@m0.5", "5e-05", "5e-05@m1.5"]  # factor 1 keeps the old tag
    assert summary["5e-05@m1.5"] == {"learning_rate": 5e-5, "margin_factor": 1.5, "dev_ap": [0.85],
                                     "dev_ap_mean": 0.85, "dev_ap_std": None, "complete": True}
    assert summary["5e-05@m0.5"]["complete"] is False
    for entry, margin in zip(summary.values(), (0.8, 0.4, 0.8, 1.2), strict=True):
        entry["margin"] = {"neg_margin": margin, "pos_margin": 0.0}
    info = {"learning_rate": 5e-5, "margin_factor": 1.5, "margin": {"neg_margin": 1.2, "pos_margin": 0.0},
            "seeds": [0, 1], "select_seeds": [0], "grid": summary,
            "chosen_dev_ap": {"dev_ap": [0.85, 0.83], "dev_ap_mean": 0.84, "dev_ap_std": 0.0141}}
    header, rows = fair_peers.tuning_table({"ms_x": info})
    assert header == ["system", "lr", "margin", "dev AP per seed", "dev AP mean ± sd", "chosen"]
    assert rows[3] == ["ms_x", "5e-05", "neg_margin 1.2, pos_margin 0 (x1.5)", "0.8500", "0.8500", "**yes**"]
    assert rows[1][2] == "neg_margin 0.4, pos_margin 0 (x0.5)" and rows[1][5] == "incomplete"
    assert rows[2][5] == ""  # factor 1 at the chosen lr is not the chosen cell
    assert rows[4] == ["ms_x", "5e-05, seeds [0, 1]", "neg_margin 1.2, pos_margin 0 (x1.5)", "0.8500, 0.8300",
                       "0.8400 ± 0.0141", "lr and margin chosen on seeds [0]"]
    text = quality.tuning_markdown({"ms_x": info}, None)
    assert text.startswith("Learning-rate x margin grid")


def test_cell_names_keep_the_old_name_at_factor_one():
    assert fair_peers.cell_name("ms_contrastive_l2", 5e-5, 0) == "ms_contrastive_l2@lr5e-05@s0"
    assert fair_peers.cell_name("ms_contrastive_l2", 5e-5, 0, 1.0) == "ms_contrastive_l2@lr5e-05@s0"
    assert fair_peers.cell_name("st_mnrl", 1e-4, 2, 1.25) == "st_mnrl@lr0.0001@m1.25@s2"
    assert fair_peers.cell_name("st_mnrl", 2e-5, 1, 0.5) == "st_mnrl@lr2e-05@m0.5@s1"


# ----------------------------------------------------------------------------- the factor in each loss
def _task(recipe: str = "mrpc.yaml", name: str = "mrpc") -> quality.Task:
    config = quality.TrainConfig.from_yaml(quality.RECIPES / recipe)
    return quality.Task(name, config, None, None, None, steps=7)  # type: ignore[arg-type]


def test_scaled_loss_params_and_the_parameter_computations():
    params = {"pos_margin": 0.1, "neg_margin": 0.8, "miner": "hard_pairs"}
    assert fair_peers.scaled_loss_params("online_contrastive", params, 2.0) == {
        "pos_margin": 0.1 * 2.0, "neg_margin": 0.8 * 2.0, "miner": "hard_pairs"}
    assert fair_peers.scaled_loss_params("triplet", {"margin": 0.2}, 1.5) == {"margin": 0.2 * 1.5}
    assert fair_peers.scaled_loss_params("ntxent", {"temperature": 0.05}, 0.5) == {"temperature": 0.05 * 0.5}
    with pytest.raises(ValueError, match="neg_margin"):
        fair_peers.scaled_loss_params("contrastive", {"pos_margin": 0.0}, 2.0)
    with pytest.raises(ValueError, match="multi_similarity"):
        fair_peers.scaled_loss_params("multi_similarity", {"base": 0.8}, 2.0)
    assert fair_peers.st_margin("online_contrastive") == {"margin": 0.5}
    assert fair_peers.st_margin("online_contrastive", 1.5) == {"margin": 0.5 * 1.5}
    assert fair_peers.st_margin("mnrl", 1.0) == {"scale": 20.0}
    assert fair_peers.st_margin("mnrl_hn", 1.5) == {"scale": 20.0 / 1.5}
    assert fair_peers.st_margin("cosent", 2.0) == {"scale": 20.0 / 2.0}
    with pytest.raises(ValueError, match="angle"):
        fair_peers.st_margin("angle", 1.0)


@pytest.mark.parametrize("variant, recipe, task_name, key, base", [
    ("contrastive_l2", "mrpc.yaml", "mrpc", "neg_margin", 0.8),
    ("contrastive_l2_hn", "quora_duplicates.yaml", "qqp", "neg_margin", 0.8),
    ("contrastive_l1", "quora_duplicates.yaml", "qqp", "neg_margin", 12.5),
    ("triplet", "mrpc.yaml", "mrpc", "margin", 0.2),
    ("ntxent", "mrpc.yaml", "mrpc", "temperature", 0.05),
])
def test_ms_cell_config_scales_the_margin_and_nothing_else(variant, recipe, task_name, key, base):
    task = _task(recipe, task_name)
    plain = quality._ms_config(task, variant).replace(seed=3, learning_rate=2e-5, load_best_model_at_end=True)
    assert quality.ms_cell_config(task, f"ms_{variant}", 2e-5, 3) == plain
    assert quality.ms_cell_config(task, f"ms_{variant}", 2e-5, 3, 1.0) == plain
    scaled = quality.ms_cell_config(task, f"ms_{variant}", 2e-5, 3, 1.5)
    assert scaled.loss_params[key] == base * 1.5
    if "pos_margin" in plain.loss_params:  # 0 in every recipe: scaled, it stays 0
        assert scaled.loss_params["pos_margin"] == 0.0
    assert scaled.replace(loss_params=plain.loss_params) == plain


class _Stop(Exception):
    pass


def _ctx(tmp_path: Path, task: quality.Task) -> quality.Context:
    return quality.Context(task, quality.Store(tmp_path), [0], {})


def test_grid_cell_hands_the_scaled_margin_to_metric_sim_train(tmp_path, monkeypatch):
    seen = []

    def fake_train(config, run_dir, **kwargs):
        seen.append((config, Path(run_dir).name))
        raise _Stop

    monkeypatch.setattr(quality_grid, "train", fake_train)
    ctx = _ctx(tmp_path, _task())
    for factor in (1.25, 1.0):
        with pytest.raises(_Stop):
            quality._grid_cell(ctx, "ms_contrastive_l2", 5e-5, 0, factor)
    (scaled, scaled_dir), (plain, plain_dir) = seen
    assert scaled_dir == "ms_contrastive_l2@lr5e-05@m1.25@s0" and plain_dir == "ms_contrastive_l2@lr5e-05@s0"
    assert scaled.loss_params["neg_margin"] == 0.8 * 1.25 and plain.loss_params["neg_margin"] == 0.8
    assert scaled.learning_rate == plain.learning_rate == 5e-5 and scaled.seed == 0 and scaled.load_best_model_at_end


def test_grid_cell_hands_the_factor_to_the_sentence_transformers_trainer(tmp_path, monkeypatch):
    seen = []

    def fake_train(loss_name, train_pairs, out_dir, **kwargs):
        seen.append((loss_name, Path(out_dir).name, kwargs))
        raise _Stop

    monkeypatch.setattr(quality_grid, "train_sentence_transformers", fake_train)
    with pytest.raises(_Stop):
        quality._grid_cell(_ctx(tmp_path, _task()), "st_online_contrastive", 5e-5, 1, 0.5)
    ((loss_name, folder, kwargs),) = seen
    assert loss_name == "online_contrastive" and folder == "st_online_contrastive@lr5e-05@m0.5@s1"
    assert kwargs["margin_factor"] == 0.5 and kwargs["learning_rate"] == 5e-5 and kwargs["seed"] == 1


def test_finished_cells_named_the_old_way_are_reused_at_factor_one(tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell must not train again")

    monkeypatch.setattr(quality_grid, "train", no_training)
    monkeypatch.setattr(quality_grid, "train_sentence_transformers", no_training)
    ms = tmp_path / "runs" / "ms_contrastive_l2@lr5e-05@s0"  # as written before the margin grid
    (ms / "model").mkdir(parents=True)
    (ms / "model" / "metric_sim.json").write_text("{}")
    (ms / "train_config.json").write_text(json.dumps({
        "loss": "online_contrastive", "loss_params": {"pos_margin": 0.0, "neg_margin": 0.8}, "batch_size": 32,
        "run": {"steps": 7, "train_runtime_s": 3.0, "wall_time_s": 4.0}}))
    (ms / "metrics.json").write_text(json.dumps({"dev": {"best_step_average_precision": 0.91}}))
    st = tmp_path / "runs" / "st_online_contrastive@lr5e-05@s0"
    st.mkdir(parents=True)
    (st / "st_train.json").write_text(json.dumps({"loss": "online_contrastive", "dev_ap": 0.88, "train_s": 2.0}))
    ctx = _ctx(tmp_path, _task())
    record = quality.grid_cell(ctx, "ms_contrastive_l2", 5e-5, 0, 1.0)
    assert record["cell"] == ms.name and record["dev_ap"] == 0.91 and record["margin_factor"] == 1.0
    assert record["margin"] == {"neg_margin": 0.8, "pos_margin": 0.0}
    record = quality.grid_cell(ctx, "st_online_contrastive", 5e-5, 0)
    assert record["cell"] == st.name and record["dev_ap"] == 0.88 and record["margin"] == {"margin": 0.5}


def test_st_loss_builds_the_scaled_sentence_transformers_losses():
    st = pytest.importorskip("sentence_transformers")
    try:
        from sentence_transformers.sentence_transformer import losses
        from sentence_transformers.sentence_transformer.modules import Pooling
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers import losses
        from sentence_transformers.models import Pooling
    model = st.SentenceTransformer(modules=[Pooling(8)], device="cpu")  # no weights: losses only hold it
    # factor 1 is the library default, so cells trained before the grid match
    assert quality.st_loss(model, "online_contrastive", 1.0).margin == losses.OnlineContrastiveLoss(model).margin == 0.5
    assert quality.st_loss(model, "mnrl").scale == losses.MultipleNegativesRankingLoss(model).scale == 20.0
    oc = quality.st_loss(model, "online_contrastive", 1.5)
    assert isinstance(oc, losses.OnlineContrastiveLoss) and oc.margin == 0.5 * 1.5
    hn = quality.st_loss(model, "mnrl_hn", 2.0)
    assert isinstance(hn, losses.MultipleNegativesRankingLoss) and hn.scale == 10.0
    cosent = quality.st_loss(model, "cosent", 2.0)
    assert isinstance(cosent, losses.CoSENTLoss) and cosent.scale == 10.0
    assert quality.st_loss(model, "cosent").scale == losses.CoSENTLoss(model).scale == 20.0
    with pytest.raises(ValueError, match="unknown sentence-transformers loss"):
        quality.st_loss(model, "angle", 1.0)


# ----------------------------------------------------------------------------- run_tuned and the rows


def test_run_tuned_chooses_lr_and_margin_jointly_and_labels_the_rows(monkeypatch):
    dev_ap = {(5e-5, 0.5, 0): 0.80, (5e-5, 1.0, 0): 0.82, (5e-5, 1.5, 0): 0.86, (1e-4, 0.5, 0): 0.70,
              (1e-4, 1.0, 0): 0.85, (1e-4, 1.5, 0): 0.84, (5e-5, 1.5, 1): 0.84}
    trained = []

    def fake_cell(ctx, name, lr, seed, factor=1.0):
        trained.append((lr, factor, seed))
        return {"cell": fair_peers.cell_name(name, lr, seed, factor), "dev_ap": dev_ap[(lr, factor, seed)],
                "model": "m", "margin_factor": factor, "margin": {"neg_margin": 0.8 * factor, "pos_margin": 0.0}}

    class Model:
        encoder, metric = None, quality.Metric.EUCLIDEAN

        @staticmethod
        def from_pretrained(path):
            return Model()

    monkeypatch.setattr(quality_grid, "grid_cell", fake_cell)
    monkeypatch.setattr(quality_grid, "SimilarityModel", Model)
    monkeypatch.setattr(quality_grid, "encoder_distances", lambda encoder, metrics, task: {metrics[0]: {}})
    store = MemoryRowStore()
    ctx = type("Ctx", (), {"store": store, "task": None})()
    record = quality.run_tuned(ctx, "ms_x", "x", [5e-5, 1e-4], [0, 1], select_seeds=[0], margin_grid=[0.5, 1.0, 1.5])
    assert sorted(trained) == sorted([k for k in dev_ap if k[2] == 0] + [(5e-5, 1.5, 1)])
    assert record["learning_rate"] == 5e-5 and record["margin_factor"] == 1.5 and record["margin_grid"] == [0.5, 1.0, 1.5]
    assert record["margin"] == {"neg_margin": 0.8 * 1.5, "pos_margin": 0.0}
    assert list(record["grid"]) == ["5e-05@m0.5", "5e-05", "5e-05@m1.5", "0.0001@m0.5", "0.0001", "0.0001@m1.5"]
    assert record["grid"]["0.0001@m1.5"]["margin"] == {"neg_margin": 0.8 * 1.5, "pos_margin": 0.0}
    assert record["chosen_dev_ap"]["dev_ap"] == [0.86, 0.84]
    assert store.rows["ms_x_tuned@s1"]["cell"] == "ms_x@lr5e-05@m1.5@s1"
    assert store.rows["ms_x_tuned@s0"]["label"] == "x, lr 5e-05, neg_margin 1.2, pos_margin 0 (x1.5) tuned on dev, best dev checkpoint"
    assert store.rows["ms_x_tuned@s0"]["margin_factor"] == 1.5
    # without a margin grid: factor 1 only, plain lr keys and the old label
    trained.clear()
    store.rows.clear()
    record = quality.run_tuned(ctx, "ms_x", "x", [5e-5, 1e-4], [0], select_seeds=[0])
    assert trained == [(5e-5, 1.0, 0), (1e-4, 1.0, 0)] and list(record["grid"]) == ["5e-05", "0.0001"]
    assert record["learning_rate"] == 1e-4 and record["margin_factor"] == 1.0 and record["margin_grid"] is None
    assert "margin_factor" not in record["grid"]["5e-05"]
    assert store.rows["ms_x_tuned@s0"]["label"] == "x, lr 0.0001 tuned on dev, best dev checkpoint"


def test_bootstrap_compares_by_dev_ap_at_the_chosen_lr_and_margin(tmp_path):
    store = quality.Store(tmp_path)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    good, bad = 1.0 - 0.5 * y + 0.1 * rng.random(120), rng.random(120)
    for name, test in (("ms_a", good), ("ms_b", bad), ("st_c", bad)):
        store.save(f"{name}_tuned@s0", {"dev": test, "test": test, "test_rev": test},
                   {"kind": "distance", "metric": "euclidean", "label": name})

    def info(dev_aps: dict, choice: tuple) -> dict:
        return {"learning_rate": choice[0], "margin_factor": choice[1], "seeds": [0],
                "grid": fair_peers.grid_summary({k: {0: v} for k, v in dev_aps.items()}, [0])}

    # ms_b's best dev cell is not its chosen one: the comparison reads the chosen (lr, factor) cell
    tuning = {"ms_a": info({(5e-5, 1.0): 0.70, (5e-5, 1.5): 0.90}, (5e-5, 1.5)),
              "ms_b": info({(5e-5, 1.0): 0.80, (5e-5, 0.5): 0.99}, (5e-5, 1.0)),
              "st_c": info({(5e-5, 1.0): 0.50}, (5e-5, 1.0))}
    task = type("T", (), {"test": type("L", (), {"labels": y})()})()
    boot = quality.tuned_bootstrap(store, task, tuning, resamples=50)
    assert boot["ours"] == "ms_a_tuned" and boot["peer"] == "st_c_tuned"
    # limited to the systems asked for (quality.py's --systems): ms_a is not a candidate
    boot = quality.tuned_bootstrap(store, task, tuning, resamples=50, systems=["ms_b", "st_c"])
    assert boot["ours"] == "ms_b_tuned" and boot["difference"] == 0  # the same test scores as st_c
    assert quality.tuned_bootstrap(store, task, tuning, resamples=50, systems=["ms_a"]) is None


# ----------------------------------------------------------------------------- command line
def test_parse_args_margin_grid():
    assert quality.parse_args(["--work", "w", "--lr-grid"]).margin_grid is None
    args = quality.parse_args(["--work", "w", "--lr-grid", "5e-5", "--margin-grid", "1.5", "0.5", "1", "1.5"])
    assert args.margin_grid == [0.5, 1.0, 1.5] and args.lr_grid == [5e-5]
    assert quality.parse_args(["--work", "w", "--lr-grid", "--margin-grid", "2"]).lr_grid == list(fair_peers.DEFAULT_LR_GRID)


@pytest.mark.parametrize("argv, message", [
    (["--margin-grid", "0.5", "1"], "--margin-grid applies only with --lr-grid"),
    (["--lr-grid", "5e-5", "--margin-grid", "0", "1"], "got 0"),
    (["--lr-grid", "5e-5", "--margin-grid", "1", "-0.5"], "got -0.5"),
    (["--lr-grid", "5e-5", "--margin-grid", "nan"], "got nan"),
    (["--lr-grid", "5e-5", "--margin-grid", "inf", "1"], "got inf"),
    (["--lr-grid", "5e-5", "--margin-grid", "wide"], "invalid float value: 'wide'"),
    (["--lr-grid", "5e-5", "--margin-grid"], "expected at least one argument"),
])
def test_parse_args_margin_grid_errors_name_the_value(argv, message, capsys):
    with pytest.raises(SystemExit):
        quality.parse_args(["--work", "w", *argv])
    assert message in capsys.readouterr().err


def test_factor_tags_round_trip_the_cli_values():
    for text in ("0.5", "1.25", "2", "0.75"):
        factor = float(text)
        assert fair_peers.grid_tag(5e-5, factor) == f"5e-05@m{text}" and math.isclose(float(f"{factor:g}"), factor)


def test_a_margin_grid_after_an_lr_grid_keeps_the_lr_grid_in_the_table(monkeypatch):
    dev_ap = {(2e-5, 1.0): 0.80, (5e-5, 1.0): 0.83, (1e-4, 1.0): 0.82, (5e-5, 0.5): 0.84, (5e-5, 2.0): 0.81}

    def fake_cell(ctx, name, lr, seed, factor=1.0):
        return {"cell": fair_peers.cell_name(name, lr, seed, factor), "dev_ap": dev_ap[(lr, factor)] + seed / 1000,
                "margin": {"neg_margin": 0.8 * factor}}

    monkeypatch.setattr(quality_grid, "grid_cell", fake_cell)
    store = MemoryRowStore()  # every tuned row cached: run_tuned encodes nothing
    store.rows.update({"ms_x_tuned@s0": {"cell": "ms_x@lr5e-05@s0"}, "ms_x_tuned@s1": {"cell": "ms_x@lr5e-05@m0.5@s1"}})
    ctx = type("Ctx", (), {"store": store})()
    lr_grid = quality.run_tuned(ctx, "ms_x", "x", [2e-5, 5e-5, 1e-4], [0])
    assert fair_peers.with_earlier_grids(lr_grid, None) == lr_grid
    store.rows["ms_x_tuned@s0"] = {"cell": "ms_x@lr5e-05@m0.5@s0"}
    margins = quality.run_tuned(ctx, "ms_x", "x", [5e-5], [0], margin_grid=[0.5, 1.0, 2.0])
    tuning = {"ms_x": fair_peers.with_earlier_grids(margins, lr_grid)}
    assert tuning["ms_x"]["margin_factor"] == 0.5 and tuning["ms_x"]["earlier"] == [lr_grid]

    header, rows = fair_peers.tuning_table(tuning)
    assert header[2] == "margin"
    assert [(r[0], r[1], r[-1]) for r in rows] == [
        ("ms_x", "5e-05", "**yes**"), ("ms_x", "5e-05", ""), ("ms_x", "5e-05", ""),
        ("ms_x (earlier grid)", "2e-05", ""), ("ms_x (earlier grid)", "0.0001", "")]  # 5e-05 x1 shown once
    assert rows[3][3] == "0.8000" and rows[3][2] == "neg_margin 0.8 (x1)"  # recorded by the plain lr grid too
    assert rows[0][2] == "neg_margin 0.4 (x0.5)"
    # a record written before factor-1 cells kept their values names the system's default, not a value
    del tuning["ms_x"]["earlier"][0]["grid"]["2e-05"]["margin"]
    assert fair_peers.tuning_table(tuning)[1][3][2] == "default (x1)"

    # the margin grid again with a second seed replaces its own record and keeps the lr grid's
    more_seeds = quality.run_tuned(ctx, "ms_x", "x", [5e-5], [0, 1], select_seeds=[0], margin_grid=[0.5, 1.0, 2.0])
    again = fair_peers.with_earlier_grids(more_seeds, tuning["ms_x"])
    assert again["earlier"] == [lr_grid] and again["seeds"] == [0, 1]
    assert {cell["learning_rate"] for cell in fair_peers.grid_cells({"ms_x": again})} == {2e-5, 5e-5, 1e-4}

    # an earlier grid that chose another cell says so
    chose_other = {**lr_grid, "learning_rate": 1e-4}
    rows = fair_peers.tuning_table({"ms_x": fair_peers.with_earlier_grids(margins, chose_other)})[1]
    assert rows[-1][0] == "ms_x (earlier grid)" and rows[-1][-1] == "chosen by that grid"
