"""Image-similarity evaluation: N-way one-shot accuracy, catalogue retrieval, the neighbour grid.

Every figure is checked against a construction whose answer is known exactly, or against a
brute-force NumPy oracle that replays the same seeded tasks / ranks whole distance rows.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from metric_sim.errors import InvalidArgumentError, InvalidArgumentTypeError, MissingFileError
from metric_sim.evaluation import (
    catalogue_retrieval,
    one_shot_accuracies,
    one_shot_accuracy,
    plot_neighbour_grid,
    sample_one_shot_tasks,
    wilson_interval,
)
from tests.conftest import DATA_DIR, requires_data

METRICS = ("euclidean", "manhattan")


def _oracle_distances(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """Brute-force ``D[i, j] = d(a[i], b[j])`` from differences, float64 then float32."""
    diff = np.abs(a[:, None, :].astype(np.float64) - b[None, :, :].astype(np.float64))
    out = np.sqrt((diff * diff).sum(-1)) if metric == "euclidean" else diff.sum(-1)
    return out.astype(np.float32)


def _oracle_one_shot(emb: np.ndarray, tasks, metric: str) -> np.ndarray:
    """Per task, the support position at the smallest distance (first on ties) == target."""
    correct = []
    for support, query, target in zip(tasks.support, tasks.query, tasks.target, strict=True):
        d = _oracle_distances(emb[[query]], emb[support], metric)[0]
        correct.append(int(np.flatnonzero(d == d.min())[0]) == target)
    return np.array(correct)


def _clusters(n_classes: int, per_class: int, dim: int = 6, spread: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 20.0
    labels = np.repeat(np.arange(n_classes), per_class)
    return centres[labels] + rng.normal(size=(labels.size, dim)) * spread, labels


# ---- one-shot: known answers


@pytest.mark.parametrize("metric", METRICS)
def test_separated_clusters_score_one(metric):
    emb, labels = _clusters(12, 4)
    for n_way in (2, 5, 12):
        result = one_shot_accuracy(emb, labels, n_way=n_way, metric=metric, n_tasks=60)
        assert result["accuracy"] == 1.0 and result["correct_tasks"] == 60
        assert result["n_way"] == n_way and result["chance"] == pytest.approx(1 / n_way)
        assert result["interval_95"] == list(wilson_interval(60, 60))
    groups = labels // 4  # 3 groups of 4 classes
    assert one_shot_accuracy(emb, labels, n_way=4, metric=metric, n_tasks=30, groups=groups)["accuracy"] == 1.0


def test_every_query_nearer_another_class_scores_zero():
    # Class c holds +e_c and -e_c: its own other drawing is 2 away, any other class's item sqrt(2).
    n = 7
    eye = np.eye(n)
    emb = np.concatenate([eye, -eye])
    labels = np.concatenate([np.arange(n), np.arange(n)])
    for n_way in (2, 3, 7):
        assert one_shot_accuracy(emb, labels, n_way=n_way, metric="euclidean", n_tasks=50)["accuracy"] == 0.0
    # Manhattan: two classes on the diagonals of a unit square (own drawing 2 away, the other 1).
    square = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    for metric in METRICS:
        result = one_shot_accuracy(square, [0, 0, 1, 1], n_way=2, metric=metric, n_tasks=40)
        assert result["accuracy"] == 0.0
        assert result["interval_95"][0] == 0.0 and 0.0 < result["interval_95"][1] < 0.1


def test_mixed_construction_matches_the_hand_rule():
    # Good classes: two identical drawings far from everything (right whenever they are the query).
    # Bad classes: +e_b / -e_b (their own drawing 2 away, another bad class's sqrt(2), a good one ~10):
    # right only when no other bad class is in the task.
    n_good, n_bad, dim = 6, 6, 12
    good = np.zeros((n_good, dim))
    good[np.arange(n_good), np.arange(n_good)] = 10.0
    bad = np.zeros((n_bad, dim))
    bad[np.arange(n_bad), n_good + np.arange(n_bad)] = 1.0
    emb = np.concatenate([good, good, bad, -bad])
    labels = np.concatenate([np.arange(n_good), np.arange(n_good), n_good + np.arange(n_bad), n_good + np.arange(n_bad)])
    is_bad = labels >= n_good
    n_way, n_tasks, seed = 4, 300, 11
    result = one_shot_accuracy(emb, labels, n_way=n_way, metric="euclidean", n_tasks=n_tasks, seed=seed, return_correct=True)
    tasks = sample_one_shot_tasks(labels, n_way=n_way, n_tasks=n_tasks, seed=seed)
    target_bad = is_bad[tasks.query]
    expected = ~target_bad | (is_bad[tasks.support].sum(axis=1) == 1)
    np.testing.assert_array_equal(result["correct"], expected)
    assert result["accuracy"] == pytest.approx(expected.mean())
    assert 0.2 < result["accuracy"] < 0.9  # a real mixture, not a degenerate case


@pytest.mark.parametrize("metric", METRICS)
def test_random_data_matches_a_replaying_oracle(metric):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 15, size=90)
    emb = rng.normal(size=(90, 5)) + labels[:, None] * 0.15  # weakly separated: many errors
    groups = labels % 3
    for kwargs in ({}, {"groups": groups}):
        result = one_shot_accuracy(emb, labels, n_way=5, metric=metric, n_tasks=120, seed=5, return_correct=True, **kwargs)
        tasks = sample_one_shot_tasks(labels, n_way=5, n_tasks=120, seed=5, **kwargs)
        np.testing.assert_array_equal(result["correct"], _oracle_one_shot(emb, tasks, metric))
        assert 0.0 < result["accuracy"] < 1.0


def test_ties_go_to_the_first_drawn_support_item():
    labels = np.repeat(np.arange(10), 3)
    emb = np.ones((labels.size, 4))  # every distance is 0
    result = one_shot_accuracy(emb, labels, n_way=5, metric="manhattan", n_tasks=200, seed=2, return_correct=True)
    tasks = sample_one_shot_tasks(labels, n_way=5, n_tasks=200, seed=2)
    np.testing.assert_array_equal(result["correct"], tasks.target == 0)
    assert 0.1 < result["accuracy"] < 0.3  # chance (1/5), not 0 or 1


@pytest.mark.slow
@requires_data
def test_raw_pixels_on_real_omniglot_beat_chance_and_within_alphabet_is_harder():
    from metric_sim.images import iter_zip_images, open_image

    archive = DATA_DIR / "omniglot" / "images_background_small2.zip"
    if not archive.is_file():
        pytest.skip(f"{archive} not found")
    locations = list(iter_zip_images(archive))
    parts = [location.split("!/", 1)[1].split("/") for location in locations]  # set/alphabet/character/file
    alphabets = np.array([p[1] for p in parts])
    characters = np.array([f"{p[1]}/{p[2]}" for p in parts])
    pixels = np.stack([np.asarray(open_image(x, mode="L").resize((21, 21)), dtype=np.float32).ravel() for x in locations])
    mixed = one_shot_accuracies(pixels / 255, characters, n_ways=(5, 20), metric="euclidean")
    within = one_shot_accuracies(pixels / 255, characters, n_ways=(5, 20), metric="euclidean", groups=alphabets)
    for n_way in (5, 20):
        key = f"{n_way}_way"
        assert mixed[key]["interval_95"][0] > 1.5 / n_way  # raw pixels are a weak but real baseline
        assert within[key]["eligible_groups"] >= 4 and within[key]["accuracy"] <= mixed[key]["accuracy"]


# ---- one-shot: the sampler


def test_tasks_follow_the_protocol_and_stay_inside_one_group():
    rng = np.random.default_rng(0)
    # Groups of 3, 5, 8 and 2 classes; a few classes with a single drawing (never eligible).
    sizes = {0: 3, 1: 5, 2: 8, 3: 2}
    class_group = np.concatenate([[g] * n for g, n in sizes.items()])
    per_class = rng.integers(2, 5, size=class_group.size)
    per_class[[1, 9]] = 1
    labels = np.repeat(np.arange(class_group.size), per_class)
    groups = np.array([f"alphabet-{g}" for g in class_group[labels]])
    tasks = sample_one_shot_tasks(labels, n_way=3, n_tasks=300, seed=1, groups=groups)
    assert tasks.support.shape == (300, 3) and tasks.eligible_groups == 2  # groups 1 and 2 (group 0 lost a class)
    support_labels = labels[tasks.support]
    for t in range(300):
        assert len(set(support_labels[t])) == 3  # N distinct classes
        assert len(set(groups[tasks.support[t]])) == 1  # one group per task
        assert groups[tasks.support[t][0]] in ("alphabet-1", "alphabet-2")
        assert labels[tasks.query[t]] == support_labels[t, tasks.target[t]]
        assert tasks.query[t] not in tasks.support[t]  # another drawing, never the support item
    assert set(groups[tasks.query]) == {"alphabet-1", "alphabet-2"}
    assert not np.isin(labels[tasks.support], [1, 9]).any()
    # Without groups the tasks mix groups.
    mixed = sample_one_shot_tasks(labels, n_way=3, n_tasks=200, seed=1)
    assert any(len(set(groups[s])) > 1 for s in mixed.support)
    assert np.bincount(mixed.target, minlength=3).min() > 40  # the target position is uniform


def test_sampling_is_reproducible_by_seed():
    emb, labels = _clusters(10, 3, spread=30.0)
    a = sample_one_shot_tasks(labels, n_way=5, n_tasks=50, seed=7)
    b = sample_one_shot_tasks(labels, n_way=5, n_tasks=50, seed=7)
    c = sample_one_shot_tasks(labels, n_way=5, n_tasks=50, seed=8)
    np.testing.assert_array_equal(a.support, b.support)
    np.testing.assert_array_equal(a.query, b.query)
    assert not np.array_equal(a.support, c.support)
    r1 = one_shot_accuracy(emb, labels, n_way=5, metric="l2", n_tasks=50, seed=7, return_correct=True)
    r2 = one_shot_accuracy(emb, labels, n_way=5, metric="l2", n_tasks=50, seed=7, return_correct=True)
    np.testing.assert_array_equal(r1["correct"], r2["correct"])


def test_several_n_way_at_once():
    emb, labels = _clusters(25, 3, spread=8.0)
    both = one_shot_accuracies(emb, labels, n_ways=(5, 20), metric="euclidean", n_tasks=40, seed=4)
    assert list(both) == ["5_way", "20_way"]
    assert both["20_way"] == one_shot_accuracy(emb, labels, n_way=20, metric="euclidean", n_tasks=40, seed=4)
    json.dumps(both)  # JSON-ready without the per-task array
    with pytest.raises(InvalidArgumentError, match=r"n_ways\[1\]"):
        one_shot_accuracies(emb, labels, n_ways=(5, 1), metric="euclidean")
    with pytest.raises(InvalidArgumentError, match="n_ways"):
        one_shot_accuracies(emb, labels, n_ways=(), metric="euclidean")


def test_wilson_interval_against_published_values():
    # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (Wilson score).
    for (k, n), (low, high) in {
        (81, 263): (0.2553, 0.3662),
        (15, 148): (0.0624, 0.1605),
        (0, 20): (0.0, 0.1611),
        (1, 29): (0.0061, 0.1718),
    }.items():
        got = wilson_interval(k, n)
        assert got == pytest.approx((low, high), abs=5e-5)
    assert wilson_interval(8, 10) == pytest.approx((0.4901625, 0.9433178), abs=1e-6)
    assert wilson_interval(20, 20)[1] == 1.0
    with pytest.raises(InvalidArgumentError, match="successes"):
        wilson_interval(11, 10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_way": 1}, "n_way must be an integer >= 2, got 1"),
        ({"n_way": True}, "n_way"),
        ({"n_way": 7}, r"n_way=7 needs at least 7 classes with >= 2 items, labels have 5 \(of 6"),
        ({"n_tasks": 0}, "n_tasks must be a positive integer, got 0"),
        ({"seed": -1}, "seed"),
        ({"metric": "cosine"}, "metric must be one of"),
        ({"labels": np.zeros(3)}, r"labels must be 1-D with one label per embedding \(11\)"),
        ({"embeddings": np.zeros(11)}, "embeddings must be a 2-D array"),
        ({"embeddings": np.full((11, 2), np.nan)}, "NaN"),
        ({"groups": np.zeros(4)}, r"groups must be 1-D with one entry per item \(11\)"),
        ({"groups": np.arange(11)}, "class 0 spans several groups"),
        ({"groups": np.arange(11) // 2, "n_way": 2}, "a group with at least 2 classes of >= 2 items; the largest group has 1"),
        ({"groups": np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2])}, r"class 4 spans several groups \(item 8 is in group 1, item 9 in group 2\)"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5])  # class 5 has one drawing: not eligible
    args = {"embeddings": np.random.default_rng(0).normal(size=(11, 2)), "labels": labels, "n_way": 3, "metric": "l2"}
    args.update(kwargs)
    with pytest.raises(InvalidArgumentError, match=match):
        one_shot_accuracy(args.pop("embeddings"), args.pop("labels"), **args)


def test_groups_too_small_for_n_way():
    labels = np.repeat(np.arange(6), 2)
    with pytest.raises(InvalidArgumentError, match="a group with at least 4 classes.*largest group has 3"):
        one_shot_accuracy(np.zeros((12, 2)), labels, n_way=4, metric="l1", groups=labels // 3)


# ---- catalogue retrieval


def _oracle_catalogue(q, ql, g, gl, metric, ks):
    dist = _oracle_distances(q, g, metric)
    order = np.argsort(dist, axis=1, kind="stable")
    ranks = np.array([1 + int(np.flatnonzero(gl[row] == label)[0]) for row, label in zip(order, ql, strict=True)])
    out = {f"recall_at_{k}": float(np.mean([label in gl[row[:k]] for row, label in zip(order, ql, strict=True)])) for k in ks}
    return ranks, {**out, "mrr": float(np.mean(1.0 / ranks))}


@pytest.mark.parametrize("metric", METRICS)
def test_catalogue_matches_brute_force_on_random_data(metric):
    rng = np.random.default_rng(9)
    gallery_labels = np.concatenate([np.arange(40), rng.integers(0, 40, size=10)])  # some products twice
    gallery = rng.normal(size=(gallery_labels.size, 8))
    query_labels = rng.integers(0, 40, size=70)
    queries = rng.normal(size=(70, 8)) * 1.2 + gallery[query_labels] * 0.6  # a noisy photo of the product
    result = catalogue_retrieval(queries, query_labels, gallery, gallery_labels, metric=metric, ks=(1, 3, 10), block_size=16)
    ranks, expected = _oracle_catalogue(queries, query_labels, gallery, gallery_labels, metric, (1, 3, 10))
    np.testing.assert_array_equal(result["ranks"], ranks)
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=1e-12)
    assert result["queries"] == 70 and result["skipped_queries"] == 0 and result["gallery"] == 50
    assert result["median_rank"] == float(np.median(ranks)) and 0.0 < result["recall_at_1"] < 1.0


@pytest.mark.parametrize("metric", METRICS)
def test_catalogue_ties_follow_a_stable_sort(metric):
    rng = np.random.default_rng(1)
    gallery = rng.integers(0, 3, size=(30, 2)).astype(np.float64)  # many exactly equal distances
    gallery_labels = rng.integers(0, 12, size=30)
    query_labels = rng.choice(np.unique(gallery_labels), size=40)
    queries = rng.integers(0, 3, size=(40, 2)).astype(np.float64)
    result = catalogue_retrieval(queries, query_labels, gallery, gallery_labels, metric=metric, ks=(1, 5), block_size=7)
    ranks, expected = _oracle_catalogue(queries, query_labels, gallery, gallery_labels, metric, (1, 5))
    np.testing.assert_array_equal(result["ranks"], ranks)
    assert result["recall_at_5"] == pytest.approx(expected["recall_at_5"])
    # A hand case: two entries at the same distance, the lower index ranks first.
    hand = catalogue_retrieval([[0.0]], ["b"], [[1.0], [-1.0], [5.0]], ["a", "b", "b"], metric=metric)
    assert hand["ranks"].tolist() == [2] and hand["recall_at_1"] == 0.0 and hand["mrr"] == 0.5


def test_catalogue_queries_without_an_entry():
    gallery, gallery_labels = np.array([[0.0], [10.0]]), np.array(["apple", "oat"])
    queries, query_labels = np.array([[1.0], [9.0], [3.0]]), np.array(["apple", "pear", "oat"])
    with pytest.raises(InvalidArgumentError, match=r"query_labels\[1\] = 'pear' has no gallery entry \(1 of 3"):
        catalogue_retrieval(queries, query_labels, gallery, gallery_labels, metric="l1")
    result = catalogue_retrieval(queries, query_labels, gallery, gallery_labels, metric="l1", missing="skip")
    assert result["queries"] == 2 and result["skipped_queries"] == 1
    assert result["ranks"].tolist() == [1, 0, 2]
    assert result["recall_at_1"] == 0.5 and result["mrr"] == 0.75
    none = catalogue_retrieval(queries[1:2], query_labels[1:2], gallery, gallery_labels, metric="l1", missing="skip")
    assert none["queries"] == 0 and none["recall_at_1"] is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gallery_embeddings": np.zeros((2, 3))}, "gallery_embeddings must have 2 columns"),
        ({"gallery_labels": [0]}, r"gallery_labels must be 1-D with one label per row of gallery_embeddings \(2\)"),
        ({"query_labels": [0, 1, 1]}, "query_labels must be 1-D"),
        ({"ks": ()}, "ks must hold at least one"),
        ({"ks": (1, 0)}, r"ks\[i\] must be a positive integer, got 0"),
        ({"missing": "ignore"}, "missing must be one of"),
        ({"metric": "cosine"}, "metric must be one of"),
    ],
)
def test_catalogue_bad_arguments(kwargs, match):
    args = {
        "query_embeddings": np.zeros((2, 2)), "query_labels": [0, 1],
        "gallery_embeddings": np.ones((2, 2)), "gallery_labels": [0, 1], "metric": "l2",
    }
    args.update(kwargs)
    with pytest.raises(InvalidArgumentError, match=match):
        catalogue_retrieval(
            args.pop("query_embeddings"), args.pop("query_labels"), args.pop("gallery_embeddings"), args.pop("gallery_labels"), **args
        )


# ---- the neighbour grid


def _grey(value: int, size=(40, 30)) -> np.ndarray:
    return np.full((size[1], size[0]), value, dtype=np.uint8)


def _png_bytes(value: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(_grey(value)).save(buffer, format="PNG")
    return buffer.getvalue()


def _cells(path, rows, columns):
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    h, w = pixels.shape[:2]
    assert h % rows == 0 and w % columns == 0
    ch, cw = h // rows, w // columns
    return {(r, c): pixels[r * ch : (r + 1) * ch, c * cw : (c + 1) * cw] for r in range(rows) for c in range(columns)}


def _red(cell):
    return int(np.sum((cell[..., 0] > 180) & (cell[..., 1] < 80) & (cell[..., 2] < 80)))


def _green(cell):
    return int(np.sum((cell[..., 1] > 120) & (cell[..., 0] < 80) & (cell[..., 2] < 110)))


def test_grid_size_follows_rows_and_columns(tmp_path):
    from PIL import Image

    def size(n_rows, n_neighbours, **kwargs):
        rows = [(_grey(100), [(_grey(120), 0.5, 0.9, None)] * n_neighbours) for _ in range(n_rows)]
        path = plot_neighbour_grid(rows, tmp_path / f"g{n_rows}x{n_neighbours}{len(kwargs)}.png", thumb_size=40, **kwargs)
        with Image.open(path) as image:
            return image.size

    w1, h1 = size(1, 1)
    assert size(3, 4) == (w1 * 5 // 2, h1 * 3)
    assert size(2, 2) == (w1 * 3 // 2, h1 * 2)
    titled = size(2, 2, title="Nearest catalogue entries")
    assert titled[0] == w1 * 3 // 2 and titled[1] > h1 * 2
    assert not [p for p in tmp_path.iterdir() if p.suffix != ".png"]  # atomic: no temporary left


def test_grid_marks_wrong_matches_red_and_right_ones_green(tmp_path):
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.fromarray(_grey(90, (50, 70))).save(photo)
    record = {"title": "Oat milk 1 l, organic", "image": str(photo)}
    rows = [
        (str(photo), [
            (_grey(60), 0.12, 0.97, True),
            (record, 0.8, 0.41, False),
            (json.dumps({"title": "Golden Delicious apples"}), 1.5, None, False),
        ]),
        (Image.fromarray(_grey(200)), [
            (_png_bytes(30), 0.3, 0.88, None),
            (json.dumps(record), 0.31, 0.87, True),
        ]),
    ]
    path = plot_neighbour_grid(rows, tmp_path / "out" / "grid.png", title="Query then its 3 nearest")
    assert path == tmp_path / "out" / "grid.png"
    # Read back without the title band: a grid drawn without a title gives the cell boxes.
    untitled = plot_neighbour_grid(rows, tmp_path / "grid_untitled.png")
    cells = _cells(untitled, rows=2, columns=4)
    for key in [(0, 2), (0, 3)]:  # the wrong matches
        assert _red(cells[key]) > 50, key
    for key in [(0, 1), (1, 2)]:  # the right ones
        assert _green(cells[key]) > 50 and _red(cells[key]) == 0, key
    for key in [(0, 0), (1, 0), (1, 1), (1, 3)]:  # queries, truth unknown, an empty cell
        assert _red(cells[key]) == 0 and _green(cells[key]) == 0, key


def test_grid_errors(tmp_path):
    good = [(_grey(10), [(_grey(20), 0.1, 0.5, True)])]
    with pytest.raises(InvalidArgumentError, match="rows is empty"):
        plot_neighbour_grid([], tmp_path / "a.png")
    with pytest.raises(InvalidArgumentError, match="is a folder"):
        (tmp_path / "dir.png").mkdir()
        plot_neighbour_grid(good, tmp_path / "dir.png")
    with pytest.raises(InvalidArgumentError, match=r"\.png file"):
        plot_neighbour_grid(good, tmp_path / "a.jpg")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidArgumentError, match="is a file, not a folder"):
        plot_neighbour_grid(good, tmp_path / "file" / "sub" / "a.png")
    with pytest.raises(InvalidArgumentTypeError, match="path must be a file path"):
        plot_neighbour_grid(good, 3)
    with pytest.raises(InvalidArgumentError, match=r"rows\[0\]\[1\]\[0\] probability must be in \[0, 1\]"):
        plot_neighbour_grid([(_grey(10), [(_grey(20), 0.1, 1.5, True)])], tmp_path / "a.png")
    with pytest.raises(InvalidArgumentError, match=r"rows\[0\]\[1\]\[0\] must be \(item, distance, probability, correct\)"):
        plot_neighbour_grid([(_grey(10), [(_grey(20), 0.1)])], tmp_path / "a.png")
    with pytest.raises(InvalidArgumentError, match=r"rows\[1\] must be a pair"):
        plot_neighbour_grid([*good, (_grey(10),)], tmp_path / "a.png")
    with pytest.raises(MissingFileError, match=r"rows\[0\]\[1\]\[0\] item.*missing\.png"):
        plot_neighbour_grid([(_grey(10), [(str(tmp_path / "missing.png"), 0.1, 0.5, True)])], tmp_path / "a.png")
    with pytest.raises(InvalidArgumentError, match="a record needs an image or a title"):
        plot_neighbour_grid([({"description": "x"}, [])], tmp_path / "a.png")
    with pytest.raises(InvalidArgumentError, match="thumb_size"):
        plot_neighbour_grid(good, tmp_path / "a.png", thumb_size=4)
    assert not (tmp_path / "a.png").exists()
