"""Image collections (folders, zips, list files), identity splits, image pairs and the image presets."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metric_sim.data.collections import (
    LabelledItems,
    read_image_folder,
    read_image_list,
    read_image_zip,
)
from metric_sim.data.image_presets import (
    catalogue_pairs,
    grocery_catalogue,
    grocery_product_pairs,
    omniglot_items,
    orl_items,
)
from metric_sim.data.loader import load_pairs
from metric_sim.data.presets import list_presets, load_preset
from metric_sim.errors import DataError, InvalidArgumentError, MissingFileError
from metric_sim.images import image_id, open_image

DATA = Path(os.environ.get("METRIC_SIM_DATA", "../shared/data")).expanduser().resolve()


def _image(seed: int, size=(8, 6), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + ((len(mode),) if mode != "L" else ())
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


def _save(path: Path, seed: int, fmt: str | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "L" if path.suffix == ".pgm" else "RGB"
    _image(seed, mode=mode).save(path, format=fmt, **kwargs)
    return path


def _tree(root: Path, layout: dict[str, int], suffix: str = ".png") -> None:
    seed = 0
    for identity, n in layout.items():
        for k in range(n):
            seed += 1
            _save(root / identity / f"{k}{suffix}", seed)


def _zip_folder(folder: Path, archive: Path, top: str | None) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                rel = file.relative_to(folder).as_posix()
                zf.write(file, f"{top}/{rel}" if top else rel)
    return archive


def _collection(layout: dict[str, tuple[str | None, int]]) -> LabelledItems:
    items, labels, coarse = [], [], []
    for identity, (group, n) in layout.items():
        for k in range(n):
            items.append(f"/x/{identity}/{k}.png")
            labels.append(identity)
            coarse.append(group)
    return LabelledItems(items, labels, coarse, [f"i{k}" for k in range(len(items))], "toy")


# -- readers


def test_folder_identity_is_the_relative_parent_path(tmp_path):
    _tree(tmp_path / "root", {"alpha/c1": 2, "alpha/c2": 2, "beta/c1": 3})
    (tmp_path / "root" / "README").write_text("not an image")
    (tmp_path / "root" / "alpha" / ".hidden.png").write_text("hidden")
    items = read_image_folder(tmp_path / "root")
    assert len(items) == 7
    assert items.identities() == ["alpha/c1", "alpha/c2", "beta/c1"]
    assert items.coarse[0] == "alpha" and items.coarse[-1] == "beta"
    assert all(Path(i).is_absolute() for i in items.items)
    assert items.ids[0] == image_id(items.items[0])
    assert items.report.ignored_files == 2 and items.report.kept == 7
    assert items.report.decode_seconds > 0
    flat = read_image_folder(tmp_path / "root", depth=1)
    assert flat.identities() == ["alpha", "beta"] and flat.coarse[0] is None


def test_pgm_and_jpeg_read(tmp_path):
    _tree(tmp_path / "faces", {"s1": 2, "s2": 2}, suffix=".pgm")
    _save(tmp_path / "faces" / "s3" / "a.jpg", 9)
    items = read_image_folder(tmp_path / "faces")
    assert len(items) == 5 and items.coarse == [None] * 5


def test_zip_with_a_top_folder(tmp_path):
    _tree(tmp_path / "tree", {"Latin/character01": 2, "Latin/character02": 2, "Greek/character01": 2})
    archive = _zip_folder(tmp_path / "tree", tmp_path / "set.zip", "images_background_small1")
    items = read_image_zip(archive)
    assert items.identities() == ["Greek/character01", "Latin/character01", "Latin/character02"]
    assert items.coarse[0] == "Greek"
    assert items.items[0] == f"{archive}!/images_background_small1/Greek/character01/0.png"
    assert items.ids == read_image_folder(tmp_path / "tree").ids  # same sorted order, same content ids
    plain = read_image_zip(_zip_folder(tmp_path / "tree", tmp_path / "plain.zip", None))
    assert plain.identities() == items.identities()


def test_text_file_named_png_is_an_error_or_skipped(tmp_path):
    _tree(tmp_path / "r", {"a": 2, "b": 2})
    bad = tmp_path / "r" / "b" / "fake.png"
    bad.write_text("hello")
    with pytest.raises(DataError, match="fake.png.*not an image"):
        read_image_folder(tmp_path / "r")
    with pytest.warns(UserWarning, match="skipped 1 of 5"):
        items = read_image_folder(tmp_path / "r", on_bad_row="skip")
    assert len(items) == 4 and items.report.skipped["bad_image"] == 1
    assert items.report.entries_read == 5


def test_truncated_jpeg_is_named(tmp_path):
    _tree(tmp_path / "r", {"a": 2})
    full = io.BytesIO()
    _image(3, size=(64, 64)).save(full, format="JPEG")
    (tmp_path / "r" / "a" / "cut.jpg").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    with pytest.raises(DataError, match="cut.jpg"):
        read_image_folder(tmp_path / "r")
    archive = _zip_folder(tmp_path / "r", tmp_path / "r.zip", None)
    with pytest.raises(DataError, match=r"r\.zip!/a/cut\.jpg"):
        read_image_zip(archive)


def test_image_outside_identity_folder_and_missing_root(tmp_path):
    _tree(tmp_path / "r", {"a": 2})
    _save(tmp_path / "r" / "loose.png", 5)
    with pytest.raises(DataError, match="outside any identity folder"):
        read_image_folder(tmp_path / "r")
    with pytest.raises(MissingFileError, match="nowhere"):
        read_image_folder(tmp_path / "nowhere")


def test_exif_orientation_and_rgba(tmp_path):
    photo = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the stored 8 x 6 photo is shown 6 x 8
    _image(1, size=(8, 6)).save(photo, exif=exif.tobytes())
    assert Image.open(photo).size == (8, 6)
    assert open_image(str(photo)).size == (6, 8)
    rgba = tmp_path / "alpha.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(rgba)
    opened = open_image(str(rgba))
    assert opened.mode == "RGB" and opened.getpixel((0, 0)) == (255, 255, 255)


def _list_file(tmp_path: Path, rows: list[str]) -> Path:
    _tree(tmp_path / "train" / "Apple", {"Golden": 2, "Granny": 2}, suffix=".jpg")
    path = tmp_path / "train.txt"
    path.write_text("\n".join(rows) + "\n")
    return path


GOOD_ROWS = ["train/Apple/Golden/0.jpg, 0, 0", "train/Apple/Golden/1.jpg, 0, 0",
             "train/Apple/Granny/0.jpg, 1, 0", "train/Apple/Granny/1.jpg, 1, 0"]


def test_list_reader(tmp_path):
    items = read_image_list(_list_file(tmp_path, GOOD_ROWS))
    assert items.labels == ["0", "0", "1", "1"] and items.coarse == ["0"] * 4
    assert items.items[0] == str(tmp_path / "train/Apple/Golden/0.jpg")
    moved = tmp_path / "lists"
    moved.mkdir()
    (moved / "t.txt").write_text("\n".join(GOOD_ROWS))
    assert read_image_list(moved / "t.txt", base_dir=tmp_path).ids == items.ids


@pytest.mark.parametrize(
    ("row", "column", "message"),
    [
        ("train/Apple/Granny/1.jpg, 1", None, "expected 3 fields"),
        ("train/Apple/Granny/1.jpg, x, 0", "fine_id", "must be an integer"),
        ("train/Apple/Granny/1.jpg, 1, 0.5", "coarse_id", "must be an integer"),
        ("train/Apple/Granny/nope.jpg, 1, 0", "path", "not found"),
        ("train/Apple/Granny/1.jpg, 0, 7", "coarse_id", "has coarse id 0 on line 1"),
        (", 1, 0", "path", "empty path"),
    ],
)
def test_list_reader_bad_rows(tmp_path, row, column, message):
    path = _list_file(tmp_path, [*GOOD_ROWS[:3], row])
    with pytest.raises(DataError, match=message) as caught:
        read_image_list(path)
    assert caught.value.source == str(path) and caught.value.line == 4 and caught.value.column == column
    assert str(path) in str(caught.value) and "line 4" in str(caught.value)
    with pytest.warns(UserWarning, match="skipped 1 of 4"):
        items = read_image_list(path, on_bad_row="skip")
    assert len(items) == 3 and sum(items.report.skipped.values()) == 1
    assert items.report.skipped_examples[0]["line"] == 4


# -- splits


def test_split_by_identity_is_disjoint_and_deterministic():
    items = _collection({f"p{k}": (None, 3) for k in range(40)})
    splits = items.split_by_identity(seed=3)
    ids = {name: set(part.labels) for name, part in splits.items()}
    assert [len(ids[n]) for n in ("train", "dev", "test")] == [28, 6, 6]
    assert not (ids["train"] & ids["dev"]) and not (ids["train"] & ids["test"]) and not (ids["dev"] & ids["test"])
    again = items.split_by_identity(seed=3)
    assert all(again[n].items == splits[n].items for n in splits)
    assert items.split_by_identity(seed=4)["test"].labels != splits["test"].labels
    # the split does not depend on the order the items were read in
    reordered = items.select(list(range(len(items)))[::-1])
    assert set(reordered.split_by_identity(seed=3)["test"].labels) == ids["test"]


def test_split_errors_and_folds():
    items = _collection({f"p{k}": (None, 2) for k in range(5)})
    with pytest.raises(InvalidArgumentError, match="sum to 1"):
        items.split_by_identity({"train": 0.5, "test": 0.2})
    with pytest.raises(InvalidArgumentError, match="at least 3 identities"):
        _collection({"a": (None, 2), "b": (None, 2)}).split_by_identity()
    folds = items.identity_folds(5, seed=1)
    held = [set(f["test"].labels) for f in folds]
    assert all(len(h) == 1 for h in held) and set().union(*held) == set(items.labels)
    assert all(not (set(f["train"].labels) & set(f["test"].labels)) for f in folds)
    with pytest.raises(InvalidArgumentError, match="at least 6 identities"):
        items.identity_folds(6)


def test_split_within_identities_keeps_every_class_in_train():
    items = _collection({"a": (None, 1), "b": (None, 10), "c": (None, 3)})
    parts = items.split_within_identities({"train": 0.8, "dev": 0.2}, seed=0)
    assert set(parts["train"].labels) == {"a", "b", "c"}
    assert parts["dev"].labels.count("b") == 2 and len(parts["train"]) + len(parts["dev"]) == 14
    assert not set(parts["train"].items) & set(parts["dev"].items)


# -- pairs


def test_to_pairs_counts_and_hard_impostors():
    layout = {"A/c1": ("A", 4), "A/c2": ("A", 3), "B/c1": ("B", 5), "B/c2": ("B", 2), "C/c1": ("C", 3)}
    items = _collection(layout)
    pairs = items.to_pairs(seed=1, impostors_per_genuine=1.0, hard_impostor_share=0.5)
    genuine = sum(n * (n - 1) // 2 for _, n in layout.values())
    labels = pairs.labels
    assert int(labels.sum()) == genuine and len(pairs) == 2 * genuine
    label_of = dict(zip(items.items, items.labels, strict=True))
    coarse_of = dict(zip(items.items, items.coarse, strict=True))
    kinds = [p[0] for p in pairs.pair_ids]
    assert len(set(pairs.pair_ids)) == len(pairs)
    assert kinds.count("h") == round(0.5 * genuine)
    for a, b, y, kind in zip(pairs.texts_a, pairs.texts_b, labels, kinds, strict=True):
        assert (label_of[a] == label_of[b]) == (y == 1) == (kind == "g")
        if kind == "h":
            assert coarse_of[a] == coarse_of[b]
    keys = {tuple(sorted(p)) for p in zip(pairs.texts_a, pairs.texts_b, strict=True)}
    assert len(keys) == len(pairs)
    assert pairs.texts_a == items.to_pairs(seed=1).texts_a
    assert pairs.ids_a[0] == items.ids[items.items.index(pairs.texts_a[0])]


def test_to_pairs_cap_and_small_sets():
    items = _collection({"a": (None, 6), "b": (None, 6)})
    capped = items.to_pairs(max_genuine_per_identity=4, impostors_per_genuine=2.0, hard_impostor_share=0.0)
    assert int(capped.labels.sum()) == 8 and len(capped) == 24
    tiny = _collection({"a": (None, 2), "b": (None, 1)})
    with pytest.warns(UserWarning, match="only 2 impostor pairs exist"):
        pairs = tiny.to_pairs(impostors_per_genuine=5.0)
    assert len(pairs) == 3
    with pytest.raises(InvalidArgumentError, match="impostors_per_genuine"):
        items.to_pairs(impostors_per_genuine=-1)


def test_duplicate_content_under_two_names(tmp_path):
    _tree(tmp_path / "r", {"a": 2, "b": 2})
    (tmp_path / "r" / "a" / "copy.png").write_bytes((tmp_path / "r" / "b" / "0.png").read_bytes())
    items = read_image_folder(tmp_path / "r")
    assert len(items) == 5 and len(set(items.ids)) == 4
    pairs = items.to_pairs(seed=0)
    assert int(pairs.labels.sum()) == 4 and len(pairs) == 8
    for ia, ib, y in zip(pairs.ids_a, pairs.ids_b, pairs.labels, strict=True):
        assert not (y == 0 and ia == ib)  # identical content is never an impostor
    clusters = pairs.cluster_labels()  # the cluster rule joins a and b through the shared photo
    assert len(set(clusters.values())) == 1
    pairs.group_split({"train": 0.5, "test": 0.5})


def test_catalogue_pairs():
    photos = _collection({"A/x": ("A", 3), "A/y": ("A", 2), "B/z": ("B", 2)})
    catalogue = LabelledItems(['{"title":"x"}', '{"title":"y"}', '{"title":"z"}'], ["A/x", "A/y", "B/z"],
                              ["A", "A", "B"], ["r1", "r2", "r3"], "cat")
    pairs = catalogue_pairs(photos, catalogue, seed=0, hard_negative_share=1.0)
    assert int(pairs.labels.sum()) == 7 and len(pairs) == 14
    hard = [(a, b) for a, b, p in zip(pairs.texts_a, pairs.texts_b, pairs.pair_ids, strict=True) if p[0] == "h"]
    assert len(hard) == 5  # the B photos have no hard negative: the rest are ordinary ones
    with pytest.raises(InvalidArgumentError, match="no catalogue entry"):
        catalogue_pairs(photos, catalogue.select([0]))


# -- pair files holding image paths


def test_load_pairs_with_image_columns(tmp_path):
    _tree(tmp_path / "img", {"a": 2, "b": 1})
    zipped = _zip_folder(tmp_path / "img", tmp_path / "img.zip", None)
    (tmp_path / "pairs.tsv").write_text(
        "image_a\timage_b\tlabel\n"
        "img/a/0.png\timg/a/1.png\t1\n"
        f"{tmp_path / 'img/a/0.png'}\timg/b/0.png\t0\n"
        f"img.zip!/a/0.png\timg/a/0.png\t1\n"
    )
    pairs = load_pairs(tmp_path / "pairs.tsv", text_a="image_a", text_b="image_b", items="image")
    assert pairs.texts_a[0] == str(tmp_path / "img/a/0.png") and pairs.texts_a[2] == f"{zipped}!/a/0.png"
    assert pairs.ids_a[0] == image_id(tmp_path / "img/a/0.png") == pairs.ids_a[2] == pairs.ids_b[2]
    text = load_pairs(tmp_path / "pairs.tsv", text_a="image_a", text_b="image_b")
    assert text.texts_a[0] == "img/a/0.png" and text.ids_a[0].startswith("h")  # default unchanged


@pytest.mark.parametrize(("cell", "message"), [("img/a/none.png", "not found"), ("notes.txt", "not an image")])
def test_load_pairs_image_bad_rows(tmp_path, cell, message):
    _tree(tmp_path / "img", {"a": 2})
    (tmp_path / "notes.txt").write_text("text")
    file = tmp_path / "pairs.tsv"
    file.write_text(f"image_a\timage_b\tlabel\nimg/a/0.png\timg/a/1.png\t1\nimg/a/0.png\t{cell}\t0\n")
    with pytest.raises(DataError, match=message) as caught:
        load_pairs(file, text_a="image_a", text_b="image_b", items="image")
    assert caught.value.line == 3 and caught.value.column == "image_b" and str(file) in str(caught.value)
    with pytest.warns(UserWarning, match="dropped 1 bad row"):
        pairs = load_pairs(file, text_a="image_a", text_b="image_b", items="image", on_bad_row="skip")
    assert len(pairs) == 1 and pairs.report.bad_rows["malformed"] == 1


def test_load_pairs_items_argument_checked(tmp_path):
    with pytest.raises(InvalidArgumentError, match="items"):
        load_pairs(tmp_path / "x.tsv", items="video")
    with pytest.raises(InvalidArgumentError, match="content id"):
        load_pairs(tmp_path / "x.tsv", items="image", id_a="a", id_b="b")


# -- presets


def test_presets_listed_and_missing_folder(tmp_path):
    assert {"orl", "omniglot", "grocery"} <= set(list_presets())
    with pytest.raises(MissingFileError, match=r"orl_faces.*METRIC_SIM_DATA"):
        load_preset("orl", data_dir=tmp_path)


def test_orl_preset_on_a_tiny_copy(tmp_path):
    _tree(tmp_path / "orl_faces", {f"s{k}": 3 for k in range(1, 21)}, suffix=".pgm")
    parts = {s: load_preset("orl", split=s, data_dir=tmp_path) for s in ("train", "dev", "test")}
    people = {s: {Path(t).parent.name for t in p.texts_a + p.texts_b} for s, p in parts.items()}
    assert [len(people[s]) for s in ("train", "dev", "test")] == [14, 3, 3]
    assert not (people["train"] & people["test"]) and not (people["train"] & people["dev"])
    assert int(parts["train"].labels.sum()) == 3 * len(people["train"])


needs_data = pytest.mark.skipif(not (DATA / "orl_faces").is_dir(), reason="real data folder missing")


@pytest.mark.slow
@needs_data
def test_real_orl_and_omniglot():
    faces = orl_items(DATA)
    assert len(faces) == 400 and len(faces.identities()) == 40
    small1 = omniglot_items("small1", DATA)
    assert len(small1) == 2720 and len(small1.identities()) == 136
    assert small1.coarse[0] == small1.labels[0].split("/")[0]


@pytest.mark.slow
@needs_data
def test_real_grocery_catalogue():
    catalogue = grocery_catalogue(DATA)
    assert len(catalogue) == 81 and len(set(catalogue.labels)) == 81
    records = [json.loads(item) for item in catalogue.items]
    assert records[0]["title"] == "Apple Golden Delicious Class 1"
    assert records[1]["title"] == "Apple Granny Smith Class 1"  # that file starts with a BOM
    assert all(not r["title"].startswith("\ufeff") and Path(r["image"]).is_file() for r in records)
    assert catalogue.labels[0] == "Golden-Delicious" and catalogue.coarse[0] == "Apple"


def _mini_grocery(root: Path) -> Path:
    folder = root / "grocery"
    classes = [("Golden", 0, "Apple", 0, "Fruit/Apple/Golden"), ("Granny", 1, "Apple", 0, "Fruit/Apple/Granny"),
               ("Leek", 2, "Leek", 1, "Vegetables/Leek")]
    header = ("Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),"
              "Iconic Image Path (str),Product Description Path (str)")
    lines = [header]
    for k, (name, fine, coarse, coarse_id, where) in enumerate(classes):
        entry = folder / "iconic-images-and-descriptions" / where
        _save(entry / f"{name}_Iconic.jpg", 100 + k)
        (entry / f"{name}_Description.txt").write_text(f"About {name}.")
        info = entry / (f"{name}-Information.txt" if name == "Leek" else f"{name}_Information.txt")
        info.write_bytes(("\ufeff" if name == "Granny" else "").encode() + f"Title: {name} title \nURL: x\n".encode())
        lines.append(f"{name},{fine},{coarse},{coarse_id},/iconic-images-and-descriptions/{where}/{name}_Iconic.jpg,"
                     f"/iconic-images-and-descriptions/{where}/{name}_Description.txt")
        for split, n in (("train", 14), ("val", 2)):
            for i in range(n):
                _save(folder / split / where / f"{name}_{i:03d}.jpg", 1000 * (k + 1) + 10 * i + len(split))
    (folder / "classes.csv").write_bytes("\r\n".join(lines).encode())
    for split, n in (("train", 14), ("val", 2)):
        rows = [f"{split}/{c[4]}/{c[0]}_{i:03d}.jpg, {c[1]}, {c[3]}" for c in classes for i in range(n)]
        (folder / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return root


def test_grocery_preset_on_a_tiny_copy(tmp_path):
    root = _mini_grocery(tmp_path)
    catalogue = grocery_catalogue(root)
    records = [json.loads(item) for item in catalogue.items]
    assert [r["title"] for r in records] == ["Golden title", "Granny title", "Leek title"]
    assert records[0]["description"] == "About Golden." and Path(records[0]["image"]).is_file()
    assert catalogue.coarse == ["Apple", "Apple", "Leek"]
    train = load_preset("grocery", split="train", data_dir=root)
    dev = load_preset("grocery", split="dev", data_dir=root)
    assert not set(train.texts_a + train.texts_b) & set(dev.texts_a + dev.texts_b)  # photos split, classes kept
    assert {Path(t).parent.name for t in dev.texts_a} <= {"Golden", "Granny", "Leek"}
    test = load_preset("grocery", split="test", data_dir=root)
    assert all("/val/" in t for t in test.texts_a)
    products = grocery_product_pairs("test", root, hard_negative_share=1.0)
    assert int(products.labels.sum()) == 6 and len(products) == 12
    for photo, record, y in zip(products.texts_a, products.texts_b, products.labels, strict=True):
        assert (Path(photo).parent.name == json.loads(record)["title"].split()[0]) == (y == 1)
    assert products.ids_b[0].startswith("r")
