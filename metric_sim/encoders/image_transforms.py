"""How an image encoder turns a picture into pixels: the preprocessing spec and the training augmentation.

Both are plain JSON-able dicts saved in ``metric_sim.json``, so a loaded model preprocesses
exactly as the saved one did.

Preprocessing (``preprocess``): ``size`` ``[H, W]``; ``resize`` is
``"shorter_side_then_center_crop"`` (resize the shorter side to ``min(H, W) / crop_fraction``,
then crop the centre: how ImageNet networks are evaluated) or ``"squash"`` (resize to
``H x W`` ignoring the aspect ratio: right for already-framed pictures such as characters
or faces); ``interpolation``; ``mean`` / ``std`` per channel; ``mode`` ``"RGB"`` or ``"L"``
(greyscale, one channel).

Augmentation (``augment``, training only), chosen per data set (no flips for characters,
whose mirror image is another character): ``hflip`` (bool), ``random_resized_crop``
``[min_scale, max_scale]`` (replaces the resize), ``rotation`` (degrees), ``color_jitter``
(brightness/contrast, and saturation for colour images), ``fill`` (0-255, the grey level of
the corners a rotation uncovers: 255 for dark ink on white paper). Random draws come from
torch's generator, so ``torch.manual_seed`` fixes them.
"""

from __future__ import annotations

import math
from typing import Any

from metric_sim.errors import InvalidArgumentError, InvalidArgumentTypeError

RESIZE_RULES = ("shorter_side_then_center_crop", "squash")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
COLOUR_MODES = {"RGB": 3, "L": 1}
AUGMENT_KEYS = ("hflip", "random_resized_crop", "rotation", "color_jitter", "fill")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgumentTypeError(f"{name} must be a number, got {value!r}")
    if not low <= value <= high:
        raise InvalidArgumentError(f"{name} must be in [{low}, {high}], got {value!r}")
    return float(value)


def preprocess_spec(
    size: int | tuple[int, int] | list[int] = 224,
    *,
    resize: str = "shorter_side_then_center_crop",
    crop_fraction: float = 0.875,
    interpolation: str = "bicubic",
    mean: Any = IMAGENET_MEAN,
    std: Any = IMAGENET_STD,
    mode: str = "RGB",
) -> dict[str, Any]:
    """A checked preprocessing spec (mean/std of one value are repeated over the channels)."""
    if isinstance(size, bool) or not isinstance(size, (int, list, tuple)):
        raise InvalidArgumentTypeError(f"preprocess size must be an int or [height, width], got {size!r}")
    hw = [size, size] if isinstance(size, int) else list(size)
    if len(hw) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 8 for v in hw):
        raise InvalidArgumentError(f"preprocess size must be an int >= 8 or [height, width] of such ints, got {size!r}")
    if resize not in RESIZE_RULES:
        raise InvalidArgumentError(f"preprocess resize must be one of {list(RESIZE_RULES)}, got {resize!r}")
    if interpolation not in INTERPOLATIONS:
        raise InvalidArgumentError(f"preprocess interpolation must be one of {list(INTERPOLATIONS)}, got {interpolation!r}")
    if mode not in COLOUR_MODES:
        raise InvalidArgumentError(f"preprocess mode must be one of {list(COLOUR_MODES)}, got {mode!r}")
    channels = COLOUR_MODES[mode]
    stats = {}
    for name, value in (("mean", mean), ("std", std)):
        values = [value] if isinstance(value, (int, float)) else list(value)
        if len(values) == 1:
            values = values * channels
        if len(values) != channels:
            raise InvalidArgumentError(f"preprocess {name} needs {channels} values for mode {mode}, got {value!r}")
        stats[name] = [_number(f"preprocess {name}", v, 1e-6 if name == "std" else -10.0, 10.0) for v in values]
    return {"size": hw, "resize": resize, "crop_fraction": _number("crop_fraction", crop_fraction, 0.05, 1.0),
            "interpolation": interpolation, "mean": stats["mean"], "std": stats["std"], "mode": mode}


def check_preprocess(spec: Any) -> dict[str, Any]:
    """A saved or user-given preprocessing dict, checked and completed with defaults."""
    if not isinstance(spec, dict):
        raise InvalidArgumentTypeError(f"preprocess must be a dict, got {type(spec).__name__}")
    unknown = set(spec) - {"size", "resize", "crop_fraction", "interpolation", "mean", "std", "mode"}
    if unknown:
        raise InvalidArgumentError(f"preprocess has unknown entries {sorted(unknown)}")
    return preprocess_spec(**spec)


def check_augment(spec: Any) -> dict[str, Any] | None:
    """A checked augmentation dict (None or {} means no augmentation)."""
    if spec is None or spec == {}:
        return None
    if not isinstance(spec, dict):
        raise InvalidArgumentTypeError(f"augment must be a dict or None, got {type(spec).__name__}")
    unknown = set(spec) - set(AUGMENT_KEYS)
    if unknown:
        raise InvalidArgumentError(f"augment has unknown entries {sorted(unknown)}; known: {list(AUGMENT_KEYS)}")
    out: dict[str, Any] = {}
    if "hflip" in spec:
        if not isinstance(spec["hflip"], bool):
            raise InvalidArgumentTypeError(f"augment hflip must be true or false, got {spec['hflip']!r}")
        out["hflip"] = spec["hflip"]
    if spec.get("random_resized_crop") is not None:
        scale = spec["random_resized_crop"]
        if not isinstance(scale, (list, tuple)) or len(scale) != 2:
            raise InvalidArgumentError(f"augment random_resized_crop must be [min_scale, max_scale], got {scale!r}")
        low, high = (_number("augment random_resized_crop", v, 0.01, 1.0) for v in scale)
        if low > high:
            raise InvalidArgumentError(f"augment random_resized_crop needs min <= max, got {scale!r}")
        out["random_resized_crop"] = [low, high]
    if spec.get("rotation"):
        out["rotation"] = _number("augment rotation", spec["rotation"], 0.0, 180.0)
    if spec.get("color_jitter"):
        out["color_jitter"] = _number("augment color_jitter", spec["color_jitter"], 0.0, 1.0)
    if "fill" in spec:
        out["fill"] = int(_number("augment fill", spec["fill"], 0, 255))
    return out or None


def _interpolation(name: str) -> Any:
    from torchvision.transforms import v2

    return {"nearest": v2.InterpolationMode.NEAREST, "bilinear": v2.InterpolationMode.BILINEAR,
            "bicubic": v2.InterpolationMode.BICUBIC}[name]


def build_transform(preprocess: dict[str, Any], augment: dict[str, Any] | None = None) -> Any:
    """PIL image (already in ``preprocess['mode']``) -> float tensor (C, H, W); with ``augment``, random."""
    import torch
    from torchvision.transforms import v2

    height, width = preprocess["size"]
    interpolation = _interpolation(preprocess["interpolation"])
    steps: list[Any] = [v2.ToImage()]
    if augment and "random_resized_crop" in augment:
        steps.append(v2.RandomResizedCrop((height, width), scale=tuple(augment["random_resized_crop"]),
                                          interpolation=interpolation, antialias=True))
    elif preprocess["resize"] == "squash":
        steps.append(v2.Resize((height, width), interpolation=interpolation, antialias=True))
    else:
        shorter = int(math.floor(min(height, width) / preprocess["crop_fraction"]))
        steps += [v2.Resize(shorter, interpolation=interpolation, antialias=True), v2.CenterCrop((height, width))]
    if augment:
        if augment.get("hflip"):
            steps.append(v2.RandomHorizontalFlip())
        if augment.get("rotation"):
            steps.append(v2.RandomRotation(augment["rotation"], interpolation=v2.InterpolationMode.BILINEAR,
                                           fill=augment.get("fill", 0)))
        if augment.get("color_jitter"):
            amount = augment["color_jitter"]
            colour = amount if preprocess["mode"] == "RGB" else 0.0
            steps.append(v2.ColorJitter(brightness=amount, contrast=amount, saturation=colour))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(preprocess["mean"], preprocess["std"])]
    return v2.Compose(steps)


def from_hf_processor(processor: Any, num_channels: int = 3) -> dict[str, Any]:
    """The preprocessing spec equivalent to a transformers image processor (size, crop, mean, std)."""
    size = getattr(processor, "size", None) or {}
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    resample = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(int(getattr(processor, "resample", 2) or 2), "bilinear")
    if getattr(processor, "do_normalize", True):
        mean, std = processor.image_mean, processor.image_std
    else:
        mean, std = 0.0, 1.0
    if getattr(processor, "do_rescale", True) is False or abs(float(getattr(processor, "rescale_factor", 1 / 255))
                                                             - 1 / 255) > 1e-9:
        raise InvalidArgumentError("only image processors that rescale pixels to [0, 1] (1/255) are supported")
    mode = "L" if num_channels == 1 else "RGB"
    if "height" in size and "width" in size and not crop:
        return preprocess_spec([int(size["height"]), int(size["width"])], resize="squash", interpolation=resample,
                               mean=mean, std=std, mode=mode)
    shortest = size.get("shortest_edge") or size.get("height")
    if not shortest:
        raise InvalidArgumentError(f"cannot read the image processor's size {size!r}")
    crop_hw = [int(crop["height"]), int(crop["width"])] if crop else [int(shortest), int(shortest)]
    return preprocess_spec(crop_hw, resize="shorter_side_then_center_crop",
                           crop_fraction=min(1.0, min(crop_hw) / float(shortest)),
                           interpolation=resample, mean=mean, std=std, mode=mode)
