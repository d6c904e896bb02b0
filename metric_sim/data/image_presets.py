"""Named image datasets: ORL faces, Omniglot characters, the Grocery Store products.

Each is read in place from the data folder (``$METRIC_SIM_DATA``, see
:func:`metric_sim.data.presets.default_data_dir`; the layouts are in the data README) and
split with the fixed seed :data:`SPLIT_SEED`, so every run sees the same splits:

* ``orl``: 40 people x 10 photos, split **by person** 0.7/0.15/0.15 -> 28/6/6 people,
  so dev and test faces belong to people never seen in training.
* ``omniglot``: ``small1`` split **by character** 0.85/0.15 into train/dev (116/20 of
  its 136 characters); ``test`` is ``small2`` (5 other alphabets). One-shot evaluation
  wants the collections themselves: :func:`omniglot_items`.
* ``grocery``: ``train.txt`` split **by photo within each product class** 0.85/0.15 into
  train/dev; ``test`` is ``val.txt``. Grocery is closed-set (a photo is matched to a
  *known* catalogue of 81 products, and ``val`` covers only those same products), so a
  dev split of held-out photos of known products is the matching evaluation; faces and
  characters, where the task is telling apart people never seen, must be split by identity.

Presets give photo-photo pairs (:meth:`LabelledItems.to_pairs`); for a product model,
:func:`grocery_catalogue` gives the 81 catalogue records and
:func:`grocery_product_pairs` the photo -> catalogue pairs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np

from metric_sim.data.collections import (
    LabelledItems,
    PairSampler,
    check_image,
    pairs_between,
    ratio_count,
    read_image_folder,
    read_image_list,
    read_image_zip,
)
from metric_sim.data.delimited import DelimitedReader
from metric_sim.data.loader import resolve_location
from metric_sim.data.pairs import PairDataset
from metric_sim.errors import DataError, InvalidArgumentError, MissingFileError
from metric_sim.images import describe_record, record_id
from metric_sim.validation import require_choice, require_non_negative_int, require_probability

__all__ = [
    "IMAGE_PRESETS",
    "PAIR_SEED",
    "SPLIT_SEED",
    "as_image_records",
    "catalogue_pairs",
    "grocery_catalogue",
    "grocery_photos",
    "grocery_product_pairs",
    "image_corpus",
    "image_splits",
    "omniglot_items",
    "orl_items",
    "record_corpus",
]

#: Seed of every preset split (which people, characters or photos go where). Fixed: changing
#: it changes the test set.
SPLIT_SEED = 0
#: Seed of the impostor sampling of the preset pairs.
PAIR_SEED = 0

_OMNIGLOT = {"small1": "images_background_small1.zip", "small2": "images_background_small2.zip"}
_GROCERY_LISTS = {"train": "train.txt", "val": "val.txt"}
_CATALOGUE_COLUMNS = ("Class Name (str)", "Class ID (int)", "Coarse Class Name (str)",
                      "Coarse Class ID (int)", "Iconic Image Path (str)", "Product Description Path (str)")


def _root(data_dir: str | os.PathLike[str] | None) -> Path:
    if data_dir is None:
        from metric_sim.data.presets import default_data_dir  # here: presets imports this module

        return default_data_dir()
    return Path(os.path.abspath(os.path.expanduser(os.fspath(data_dir))))


def _folder(preset: str, path: str | os.PathLike[str] | None, data_dir: str | os.PathLike[str] | None,
            name: str) -> Path:
    folder = Path(os.path.abspath(os.fspath(path))) if path is not None else _root(data_dir) / name
    if not folder.is_dir():
        raise MissingFileError(f"{preset}: data folder not found: {folder} (set METRIC_SIM_DATA to the folder "
                               f"holding {name}/, or pass data_dir= or path=)")
    return folder


def orl_items(data_dir: str | os.PathLike[str] | None = None, *, path: str | os.PathLike[str] | None = None,
              on_bad_row: str = "error") -> LabelledItems:
    """The 400 ORL faces, labelled by person (``s1`` .. ``s40``); ``path``: the ``orl_faces`` folder."""
    return read_image_folder(_folder("orl", path, data_dir, "orl_faces"), on_bad_row=on_bad_row)


def omniglot_items(which: str = "small1", data_dir: str | os.PathLike[str] | None = None, *,
                   path: str | os.PathLike[str] | None = None, on_bad_row: str = "error") -> LabelledItems:
    """Omniglot ``small1`` (2,720 drawings, 136 characters) or ``small2`` (3,120, 156).

    Identity ``ALPHABET/characterNN``, coarse class the alphabet; read in place from the zip.
    """
    require_choice("which", which, list(_OMNIGLOT))
    folder = _folder("omniglot", path, data_dir, "omniglot")
    archive = folder / _OMNIGLOT[which]
    if not archive.is_file():
        raise MissingFileError(f"omniglot: zip not found: {archive} (set METRIC_SIM_DATA or pass data_dir=)")
    return read_image_zip(archive, on_bad_row=on_bad_row)


def _read_classes(folder: Path) -> list[dict[str, str]]:
    """Rows of ``classes.csv`` (header row, six columns) as dicts, naming the line of a bad row."""
    file = folder / "classes.csv"
    if not file.is_file():
        raise MissingFileError(f"grocery: classes.csv not found: {file}")
    header: list[str] | None = None
    rows = []
    for raw in DelimitedReader(file, source=str(file), delimiter=",", quoting="csv", encoding="utf-8"):
        if raw.fields is not None and not raw.fields:
            continue
        if raw.fields is None:
            raise DataError(f"line cannot be parsed: {raw.problem}", source=file, line=raw.start)
        if header is None:
            header = raw.fields
            if tuple(header) != _CATALOGUE_COLUMNS:
                raise DataError(f"expected the columns {list(_CATALOGUE_COLUMNS)}, got {header}", source=file,
                                line=raw.start)
            continue
        if len(raw.fields) != len(header):
            raise DataError(f"expected {len(header)} fields, got {len(raw.fields)}", source=file, line=raw.start)
        rows.append({**dict(zip(header, raw.fields, strict=True)), "line": str(raw.start)})
    if not rows:
        raise DataError("no classes", source=file)
    return rows


def grocery_photos(split: str = "train", data_dir: str | os.PathLike[str] | None = None, *,
                   path: str | os.PathLike[str] | None = None, on_bad_row: str = "error") -> LabelledItems:
    """The Grocery photos of ``train.txt`` or ``val.txt``, labelled by product class name, coarse class name."""
    require_choice("split", split, list(_GROCERY_LISTS))
    folder = _folder("grocery", path, data_dir, "grocery")
    names = {row["Class ID (int)"].strip(): (row["Class Name (str)"], row["Coarse Class Name (str)"])
             for row in _read_classes(folder)}
    photos = read_image_list(folder / _GROCERY_LISTS[split], on_bad_row=on_bad_row)
    unknown = sorted(set(photos.labels) - set(names), key=int)
    if unknown:
        raise DataError(f"fine class ids {unknown[:5]} are not in classes.csv", source=photos.source)
    return replace(photos, labels=[names[x][0] for x in photos.labels], coarse=[names[x][1] for x in photos.labels])


def _information_file(folder: Path, name: str) -> Path:
    exact = folder / f"{name}_Information.txt"
    if exact.is_file():
        return exact
    found = sorted(folder.glob("*Information.txt"))  # Cabbage ships "Cabbage-Information.txt"
    if len(found) != 1:
        raise MissingFileError(f"grocery: no single {name}_Information.txt in {folder} (found {found})")
    return found[0]


def _title(info: Path) -> str:
    # utf-8-sig: some files start with a BOM, which would otherwise hide the "Title:" line.
    for line in info.read_text(encoding="utf-8-sig").splitlines():
        if line.startswith("Title:") and line[len("Title:"):].strip():
            return line[len("Title:"):].strip()
    raise DataError("no non-empty 'Title:' line", source=info)


def grocery_catalogue(data_dir: str | os.PathLike[str] | None = None, *,
                      path: str | os.PathLike[str] | None = None) -> LabelledItems:
    """The 81 catalogue records ``{"title", "image", "description"}``, labelled by product class.

    Items are canonical record JSON (:func:`metric_sim.images.describe_record`) with the
    iconic image as an absolute location; ids are :func:`metric_sim.images.record_id`.
    The title is the ``Title:`` line of ``NAME_Information.txt`` (BOM stripped), the
    description ``NAME_Description.txt``. Every iconic image is decoded once.
    """
    folder = _folder("grocery", path, data_dir, "grocery")
    items, labels, coarse, ids = [], [], [], []
    for row in _read_classes(folder):
        where = f"{folder / 'classes.csv'}, line {row['line']}"
        image = str(folder / row["Iconic Image Path (str)"].strip().lstrip("/"))
        description_file = folder / row["Product Description Path (str)"].strip().lstrip("/")
        if not description_file.is_file():
            raise MissingFileError(f"{where}: description file not found: {description_file}")
        record = {
            "title": _title(_information_file(description_file.parent, row["Class Name (str)"])),
            "image": image,
            "description": description_file.read_text(encoding="utf-8-sig").strip(),
        }
        check_image(image, where=where)
        items.append(describe_record(record))
        ids.append(record_id(record))
        labels.append(row["Class Name (str)"])
        coarse.append(row["Coarse Class Name (str)"])
    return LabelledItems(items, labels, coarse, ids, f"{folder} (catalogue)")


def as_image_records(photos: LabelledItems) -> LabelledItems:
    """Photos as image-only product records (``{"image": location}``), so that photos and catalogue
    entries are items of one kind; items that are records already stay as they are."""
    if all(item.startswith("{") for item in photos.items):
        return photos
    records = [{"image": location} for location in photos.items]
    return LabelledItems([describe_record(r) for r in records], list(photos.labels), list(photos.coarse),
                         [record_id(r, known_image_id=i) for r, i in zip(records, photos.ids, strict=True)],
                         photos.source, photos.report)


def catalogue_pairs(photos: LabelledItems, catalogue: LabelledItems, *, seed: int = 0,
                    negatives_per_positive: float = 1.0, hard_negative_share: float = 0.5) -> PairDataset:
    """``(photo, catalogue entry)`` pairs: 1 for the photo's own class, 0 for another.

    Every photo is paired with each catalogue entry of its label (``pair_id`` ``p<n>``);
    ``round(negatives_per_positive * positives)`` distinct negatives are drawn with
    ``seed``, ``hard_negative_share`` of them from the photo's coarse class (``h<n>``,
    e.g. another apple variety; the rest ``i<n>``).
    """
    rng = np.random.default_rng(require_non_negative_int("seed", seed))
    hard_negative_share = require_probability("hard_negative_share", hard_negative_share)
    photos = as_image_records(photos)  # one item kind per pair file: a product model reads records only
    by_label: dict[str, list[int]] = {}
    for j, label in enumerate(catalogue.labels):
        by_label.setdefault(label, []).append(j)
    missing = sorted(set(photos.labels) - set(by_label))
    if missing:
        raise InvalidArgumentError(f"photos of {len(missing)} labels have no catalogue entry, e.g. {missing[:5]}")
    positives = [(i, j) for i, label in enumerate(photos.labels) for j in by_label[label]]
    wanted = ratio_count("negatives_per_positive", negatives_per_positive, len(positives))
    hard, easy = PairSampler(photos, catalogue, rng).impostors(wanted, hard_negative_share)
    return pairs_between(photos, catalogue, {"p": (1, positives), "h": (0, hard), "i": (0, easy)},
                         rng=rng, source=f"{photos.source} x {catalogue.source} (seed {seed})")


def _splits(name: str, wanted: tuple[str, ...], data_dir, path, on_bad_row: str) -> dict[str, LabelledItems]:
    """The ``wanted`` splits of a preset, reading each file once and only the files they come from."""
    read = {"data_dir": data_dir, "path": path, "on_bad_row": on_bad_row}
    if name == "orl":
        return orl_items(**read).split_by_identity({"train": 0.7, "dev": 0.15, "test": 0.15}, seed=SPLIT_SEED)
    out: dict[str, LabelledItems] = {}
    if name == "omniglot":
        if {"train", "dev"} & set(wanted):
            out.update(omniglot_items("small1", **read).split_by_identity({"train": 0.85, "dev": 0.15},
                                                                          seed=SPLIT_SEED))
        if "test" in wanted:
            out["test"] = omniglot_items("small2", **read)
        return out
    if {"train", "dev"} & set(wanted):
        photos = grocery_photos("train", **read)
        out.update(photos.split_within_identities({"train": 0.85, "dev": 0.15}, seed=SPLIT_SEED))
    if "test" in wanted:
        out["test"] = grocery_photos("val", **read)
    return out


def _one_split(name: str, split: str, data_dir, path, on_bad_row: str) -> LabelledItems:
    return _splits(name, (split,), data_dir, path, on_bad_row)[split]


def image_splits(name: str, data_dir: str | os.PathLike[str] | None = None, *,
                 path: str | os.PathLike[str] | None = None, on_bad_row: str = "error") -> dict[str, LabelledItems]:
    """The fixed train/dev/test collections of preset ``name`` (``orl``, ``omniglot``, ``grocery``)."""
    require_choice("name", name, list(IMAGE_PRESETS))
    return _splits(name, ("train", "dev", "test"), data_dir, path, on_bad_row)


def grocery_product_pairs(split: str = "train", data_dir: str | os.PathLike[str] | None = None, *,
                          path: str | os.PathLike[str] | None = None, seed: int = PAIR_SEED,
                          negatives_per_positive: float = 1.0, hard_negative_share: float = 0.5) -> PairDataset:
    """Photo -> catalogue record pairs of a grocery split (:func:`catalogue_pairs`), for a product model."""
    require_choice("split", split, ("train", "dev", "test"))
    photos = _one_split("grocery", split, data_dir, path, "error")
    return catalogue_pairs(photos, grocery_catalogue(data_dir, path=path), seed=seed,
                           negatives_per_positive=negatives_per_positive, hard_negative_share=hard_negative_share)


# Pair settings per preset: (hard impostor share, cap on genuine pairs per identity).
# ORL has no coarse class; Grocery classes hold up to 70 photos (2,415 pairs), capped so
# the big classes do not dominate.
_PAIR_SETTINGS: Mapping[str, tuple[float, int | None]] = {"orl": (0.0, None), "omniglot": (0.5, None),
                                                          "grocery": (0.5, 200)}


def _loader(name: str) -> Callable[..., PairDataset]:
    def load(*, path, split, data_dir, on_bad_row, low, high) -> PairDataset:
        collection = _one_split(name, split or "train", data_dir, path, on_bad_row)
        share, cap = _PAIR_SETTINGS[name]
        return collection.to_pairs(seed=PAIR_SEED, hard_impostor_share=share, max_genuine_per_identity=cap)

    load.__name__ = f"_load_{name}"
    return load


def _product_loader(*, path, split, data_dir, on_bad_row, low, high) -> PairDataset:
    return grocery_product_pairs(split or "train", data_dir, path=path)


#: name -> (description, splits, default split, loader) for :data:`metric_sim.data.presets.PRESETS`.
IMAGE_PRESETS: dict[str, tuple[str, tuple[str, ...], str, Callable[..., PairDataset]]] = {
    "grocery": ("Grocery Store photos, pairs of one product class; dev: held-out photos, test: val.txt",
                ("train", "dev", "test"), "train", _loader("grocery")),
    "omniglot": ("Omniglot small1 characters (train/dev by character), test: small2",
                 ("train", "dev", "test"), "train", _loader("omniglot")),
    "orl": ("ORL faces, 40 people split by person 28/6/6", ("train", "dev", "test"), "train", _loader("orl")),
    "grocery-products": ("Grocery photo -> catalogue record (title + image) pairs; dev: held-out photos, "
                         "test: val.txt", ("train", "dev", "test"), "train", _product_loader),
}


def image_corpus(path: str | os.PathLike[str]) -> tuple[list[str], list[str], str]:
    """``(ids, locations, source)`` of the images under a folder, inside a zip, or listed in an image
    list file, to index or deduplicate. An id is the image's path relative to the folder (or its
    member name in the zip, or its path as listed): stable and readable in results."""
    location = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    if location.is_dir():
        collection = read_image_folder(location, depth=None)
    elif location.suffix.lower() == ".zip":
        collection = read_image_zip(location)
    elif location.is_file():
        collection = read_image_list(location)
    else:
        raise MissingFileError(f"--images {path}: no such folder, zip or image list file")
    root = f"{location}!/" if location.suffix.lower() == ".zip" else f"{location if location.is_dir() else location.parent}/"
    ids = [item[len(root):] if item.startswith(root) else item for item in collection.items]
    return ids, list(collection.items), collection.source


def record_corpus(name_or_path: str | os.PathLike[str]) -> tuple[list[str], list[str], str]:
    """``(ids, records, source)`` of a product catalogue: the ``grocery`` preset's 81 entries
    (id: the product class), or a JSON Lines file of records (``title``, ``image`` relative to
    the file, optional ``description`` and ``id``; ids default to the line number)."""
    if os.fspath(name_or_path) == "grocery":
        catalogue = grocery_catalogue()
        return list(catalogue.labels), list(catalogue.items), catalogue.source
    path = Path(os.path.abspath(os.path.expanduser(os.fspath(name_or_path))))
    if not path.is_file():
        raise MissingFileError(f"--records {name_or_path}: no such file (or preset: grocery)")
    ids, records = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not a JSON object ({exc.msg}, column {exc.colno})") from None
        if not isinstance(record, dict) or not ({"title", "image"} & set(record)):
            raise DataError(f"{where}: a record needs a 'title' or an 'image' field, got {line[:80]!r}")
        item_id = str(record.pop("id", number))
        if record.get("image") is not None:
            record["image"] = resolve_location(str(record["image"]), path.parent)
            check_image(record["image"], where=f"{where}, field image")
        ids.append(item_id)
        records.append(describe_record(record))
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: record ids must be unique")
    return ids, records, str(path)
