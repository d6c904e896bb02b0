"""Named datasets: where each one's files are and how to read them (:func:`load_preset`)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from metric_sim.data.image_presets import IMAGE_PRESETS
from metric_sim.data.labels import ScoreLabel
from metric_sim.data.loader import load_pairs_with_roles, pair_roles
from metric_sim.data.pairs import PairDataset
from metric_sim.data.readers import Record, first_row
from metric_sim.data.report import ON_BAD_ROW
from metric_sim.errors import InvalidArgumentError, MissingFileError
from metric_sim.validation import require_choice

__all__ = ["PRESETS", "Preset", "default_data_dir", "list_presets", "load_preset"]


def default_data_dir() -> Path:
    """``$METRIC_SIM_DATA``, default ``../shared/data``, resolved against the current directory."""
    return Path(os.environ.get("METRIC_SIM_DATA", "../shared/data")).expanduser().resolve()


@dataclass(frozen=True)
class Preset:
    """A named dataset: where its files are and how to read them."""

    name: str
    description: str
    splits: tuple[str, ...]  # valid values of ``split`` (None is always allowed)
    default_split: str | None
    loader: Callable[..., PairDataset]
    score_thresholds: tuple[float, float] | None = None  # (low, high) defaults of score presets


def _require_file(path: Path, preset: str) -> Path:
    if not path.is_file():
        raise MissingFileError(
            f"{preset}: data file not found: {path} (pass path=, data_dir=, or set METRIC_SIM_DATA)"
        )
    return path


# The one documented quirk (data README, QQP section): the first line of the GLUE subset
# lost the tab before its label, so it has 5 fields and its question2 ends in " 0".
# Only that record is exempt: first data record, those three ids, that shape.
_QQP_QUIRK_IDS = ("133273", "213221", "213222")
_QQP_QUIRK_TAIL = re.compile(r"\S\s0\Z")


def _qqp_known_quirk(number: int, record: Record) -> bool:
    fields = record.fields
    return (
        number == 1
        and fields is not None
        and len(fields) == 5
        and tuple(fields[:3]) == _QQP_QUIRK_IDS
        and bool(_QQP_QUIRK_TAIL.search(fields[4]))
    )


def _load_qqp(*, path, split, data_dir, on_bad_row, low, high) -> PairDataset:
    file = _require_file(
        Path(path) if path is not None else data_dir / "qqp" / "qqp_glue_train_subset.tsv", "qqp"
    )
    first, delimiter = first_row(file, delimiter=None, quoting="csv", encoding="utf-8")
    header = "is_duplicate" in first  # GLUE train.tsv / Quora tsv / Kaggle train.csv have one
    if header:
        roles = pair_roles("question1", "question2", "is_duplicate", "qid1", "qid2", "id")
    else:  # GLUE column order: id qid1 qid2 question1 question2 is_duplicate
        roles = pair_roles(3, 4, 5, 1, 2, 0)
    pairs = load_pairs_with_roles(
        file,
        roles,
        format="tsv" if delimiter == "\t" else "csv",
        header=header,
        delimiter=delimiter,
        quoting="csv",  # 824 QQP rows have "..."" ..."" quoted questions
        on_bad_row=on_bad_row,
        n_fields=6,
        known_quirk=_qqp_known_quirk,
    )
    if split is None:
        return pairs
    candidates = list(dict.fromkeys([file.parent / "split.tsv", data_dir / "qqp" / "split.tsv"]))
    split_file = next((c for c in candidates if c.is_file()), None)
    if split_file is None:
        raise MissingFileError(
            f"qqp: split={split!r} needs split.tsv; looked in {[str(c) for c in candidates]}"
        )
    return pairs.split_from_file(split_file, split)


def _file_for_split(
    preset: str, path, split, data_dir: Path, files: dict[str, str], default: str
) -> Path:
    if path is not None:
        if split is not None:
            raise InvalidArgumentError(f"{preset}: give path= or split= (with data_dir=), not both")
        return _require_file(Path(path), preset)
    return _require_file(data_dir / preset / files[split or default], preset)


def _score_parser(preset: str, low, high) -> ScoreLabel:
    default_low, default_high = PRESETS[preset].score_thresholds  # type: ignore[misc]
    return ScoreLabel(default_low if low is None else low, default_high if high is None else high)


def _load_stsb(*, path, split, data_dir, on_bad_row, low, high) -> PairDataset:
    files = {s: f"sts-{s}.csv" for s in ("train", "dev", "test")}
    file = _file_for_split("stsb", path, split, data_dir, files, "train")
    # Tab-separated despite .csv; quoting off (bare "); 7 or 9 fields, columns 0-6 used.
    return load_pairs_with_roles(
        file,
        pair_roles(5, 6, 4, None, None, None),
        format="tsv",
        header=False,
        quoting="none",
        on_bad_row=on_bad_row,
        label_parser=_score_parser("stsb", low, high),
        n_fields=7,
        allow_extra_fields=True,
    )


def _load_sick(*, path, split, data_dir, on_bad_row, low, high) -> PairDataset:
    files = {
        "train": "SICK_train.txt",
        "trial": "SICK_trial.txt",
        "test": "SICK_test_annotated.txt",
    }
    file = _file_for_split("sick", path, split, data_dir, files, "train")
    return load_pairs_with_roles(
        file,
        pair_roles("sentence_A", "sentence_B", "relatedness_score", None, None, "pair_ID"),
        format="tsv",
        header=True,
        quoting="none",
        on_bad_row=on_bad_row,
        label_parser=_score_parser("sick", low, high),
    )


def _load_mrpc(*, path, split, data_dir, on_bad_row, low, high) -> PairDataset:
    files = {"train": "msr_paraphrase_train.txt", "test": "msr_paraphrase_test.txt"}
    file = _file_for_split("mrpc", path, split, data_dir, files, "train")
    return load_pairs_with_roles(
        file,
        pair_roles("#1 String", "#2 String", "Quality", "#1 ID", "#2 ID", None),
        format="tsv",
        header=True,
        quoting="none",  # sentences contain bare "
        encoding="utf-8-sig",  # the files start with a BOM
        on_bad_row=on_bad_row,
    )


def _load_paws(*, path, split, data_dir, on_bad_row, low, high) -> PairDataset:
    if path is None:
        raise InvalidArgumentError(
            "paws has no bundled file: pass path= to a PAWS tsv with header "
            "sentence1<TAB>sentence2<TAB>label (optional id column)"
        )
    file = _require_file(Path(path), "paws")
    first, _ = first_row(file, delimiter="\t", quoting="none", encoding="utf-8")
    return load_pairs_with_roles(
        file,
        pair_roles("sentence1", "sentence2", "label", None, None, "id" if "id" in first else None),
        format="tsv",
        header=True,
        delimiter="\t",
        quoting="none",
        on_bad_row=on_bad_row,
    )


PRESETS: dict[str, Preset] = {
    "mrpc": Preset(
        "mrpc",
        "Microsoft Research Paraphrase Corpus (Quality 0/1)",
        ("train", "test"),
        "train",
        _load_mrpc,
    ),
    "paws": Preset(
        "paws", "PAWS sentence1/sentence2/label tsv (explicit path)", (), None, _load_paws
    ),
    "qqp": Preset(
        "qqp",
        "Quora Question Pairs (GLUE/Quora tsv or Kaggle csv); split via qqp/split.tsv",
        ("train", "dev", "test"),
        None,
        _load_qqp,
    ),
    "sick": Preset(
        "sick",
        "SICK relatedness 1-5, binarised",
        ("train", "trial", "test"),
        "train",
        _load_sick,
        (3.0, 4.0),
    ),
    "stsb": Preset(
        "stsb",
        "STS Benchmark score 0-5, binarised",
        ("train", "dev", "test"),
        "train",
        _load_stsb,
        (2.5, 4.0),
    ),
    **{
        name: Preset(name, description, splits, default, loader)
        for name, (description, splits, default, loader) in IMAGE_PRESETS.items()
    },
}


def list_presets() -> list[str]:
    """Names of the presets, sorted."""
    return sorted(PRESETS)


def load_preset(
    name: str,
    path: str | os.PathLike | None = None,
    *,
    split: str | None = None,
    data_dir: str | os.PathLike | None = None,
    on_bad_row: str = "error",
    low: float | None = None,
    high: float | None = None,
) -> PairDataset:
    """Load a named dataset (:func:`list_presets`) from ``path`` or from its files under ``data_dir``.

    ``split`` picks a file (stsb/sick/mrpc) or, for qqp, a split of ``qqp/split.tsv``; the
    image presets (orl, omniglot, grocery: :mod:`metric_sim.data.image_presets`) split
    with a fixed seed and take ``path=`` as their data folder.
    ``low``/``high`` are the score thresholds of the score presets (stsb, sick).
    """
    require_choice("preset", name, list_presets())
    require_choice("on_bad_row", on_bad_row, ON_BAD_ROW)
    preset = PRESETS[name]
    if split is not None:
        require_choice(f"split of preset {name!r}", split, preset.splits)
    if preset.score_thresholds is None and (low is not None or high is not None):
        raise InvalidArgumentError(
            f"low/high apply only to score presets {[p.name for p in PRESETS.values() if p.score_thresholds]}"
        )
    if preset.score_thresholds is not None:
        _score_parser(name, low, high)  # bad thresholds fail before any file is looked for
    root = default_data_dir() if data_dir is None else Path(data_dir).expanduser().resolve()
    return preset.loader(
        path=path, split=split, data_dir=root, on_bad_row=on_bad_row, low=low, high=high
    )
