"""``Encoder``: a transformers model plus pooling, the text implementation of the encoder contract.

One encoder embeds both sides of every pair, so ``d(f(x), f(y))`` is symmetric by
construction. ``encode`` sorts texts by token count before batching (padding is
wasted compute) and returns float32 NumPy rows in the caller's order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metric_sim.encoders.base import TEXT_POOLING_MODES, TrainableEncoder, read_encoder_settings
from metric_sim.encoders.batching import encode_sorted_batches, padding_groups, token_counts
from metric_sim.encoders.precision import autocast
from metric_sim.errors import EncoderLoadError, InvalidArgumentError, InvalidArgumentTypeError
from metric_sim.layout import (
    CONFIG_FILE,
    DEFAULT_MODEL,
    PROJECTION_FILE,
    ModelSource,
    resolve_model_source,
)
from metric_sim.storage import atomic_dir, read_json
from metric_sim.validation import require_choice, require_positive_int, require_texts

logger = logging.getLogger(__name__)

POOLING_MODES = TEXT_POOLING_MODES
# Config entries that change on save/load without changing the function the model computes.
_VOLATILE_CONFIG_KEYS = {"architectures", "transformers_version", "torch_dtype", "dtype", "name_or_path"}


def _sentence_transformers_layout(path: Path) -> dict[str, Any]:
    """Pooling/normalisation of a sentence-transformers folder (modules.json + 1_Pooling)."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return {}
    settings: dict[str, Any] = {"normalize": False}
    for module in read_json(modules_file):
        kind = module.get("type", "")
        if kind.endswith("Normalize"):
            settings["normalize"] = True
        elif kind.endswith("Pooling"):
            pooling_cfg_file = path / module.get("path", "1_Pooling") / "config.json"
            if pooling_cfg_file.is_file():
                cfg = read_json(pooling_cfg_file)
                if cfg.get("pooling_mode_cls_token"):
                    settings["pooling"] = "cls"
                elif cfg.get("pooling_mode_max_tokens"):
                    settings["pooling"] = "max"
                elif cfg.get("pooling_mode_mean_tokens"):
                    settings["pooling"] = "mean"
    st_cfg_file = path / "sentence_bert_config.json"
    if st_cfg_file.is_file():
        max_len = read_json(st_cfg_file).get("max_seq_length")
        if isinstance(max_len, int) and max_len > 0:
            settings["max_length"] = max_len
    return settings


def _load_backbone(auto_model: Any, location: str) -> nn.Module:
    """Load the transformer without its unused pooler head, so no randomly initialised
    weights enter the model (they would change its fingerprint on every load)."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # load reports about the dropped pooler are noise here
    hf_logging.disable_progress_bar()
    try:
        try:
            return auto_model.from_pretrained(location, add_pooling_layer=False)
        except TypeError:  # architectures without a pooler do not take the argument
            return auto_model.from_pretrained(location)
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool token states (batch, seq, dim) into one vector per row, ignoring padding."""
    if mode == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if mode == "max":
        return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(1).values
    raise InvalidArgumentError(f"pooling must be one of {list(POOLING_MODES)}, got {mode!r}")


def _right_padded_groups(attention_mask: torch.Tensor) -> tuple[list[np.ndarray], np.ndarray]:
    """:func:`padding_groups` of a batch's rows, and the rows' lengths; one group when the batch
    is not right-padded (left padding cannot be cut by trimming columns)."""
    lengths = attention_mask.sum(dim=1)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    counts = lengths.cpu().numpy()
    if not torch.equal(attention_mask.bool(), positions.unsqueeze(0) < lengths.unsqueeze(1)):
        return [np.arange(attention_mask.shape[0])], counts
    return padding_groups(counts), counts


def _rows_and_width(value: torch.Tensor, index: torch.Tensor, width: int, token_shape: torch.Size) -> torch.Tensor:
    """A feature restricted to the rows ``index``, and to ``width`` columns when it is per token."""
    value = value.index_select(0, index)
    return value[:, :width] if value.shape[1:2] == token_shape[1:2] else value


def transformer_layer_groups(model: nn.Module, prefix: str = "") -> list[list[str]] | None:
    """A transformers model's parameter names bottom-up: the input embeddings, then one list per layer.

    Found generically rather than by architecture: the layers are the first ``nn.ModuleList``
    of ``config.num_hidden_layers`` modules (BERT's ``encoder.layer``, GPT-2's ``h``, ViT's
    ``encoder.layer``), and the embeddings are every parameter registered before the first
    layer's (BERT: ``embeddings.*``), which must include the input embeddings. What follows
    the layers (a pooler, a final norm) belongs to no group. ``prefix`` is prepended to the
    names (the model's place in its owner). None when the model cannot be split this way.
    """
    depth = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if not isinstance(depth, int) or depth < 1:
        return None
    layers = next((name for name, module in model.named_modules()
                   if isinstance(module, nn.ModuleList) and len(module) == depth), None)
    if layers is None:
        return None
    names = [name for name, _ in model.named_parameters()]
    groups: list[list[str]] = [[] for _ in range(depth + 1)]
    pattern = re.compile(rf"{re.escape(layers)}\.(\d+)\.") if layers else re.compile(r"(\d+)\.")
    seen_layer = False
    for name in names:
        match = pattern.match(name)
        if match:
            seen_layer = True
            groups[int(match.group(1)) + 1].append(prefix + name)
        elif not seen_layer:
            groups[0].append(prefix + name)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    stem = set(groups[0])
    if embeddings is None or not any(prefix + name in stem for name, _ in _named_under(model, embeddings)):
        return None
    return groups


def _named_under(model: nn.Module, module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``module``'s parameters named as in ``model.named_parameters()``."""
    owned = {id(p) for p in module.parameters()}
    return [(name, p) for name, p in model.named_parameters() if id(p) in owned]


def _projection_spec(projection: nn.Linear) -> dict[str, Any]:
    return {
        "in_features": int(projection.in_features),
        "out_features": int(projection.out_features),
        "bias": projection.bias is not None,
    }


def _load_projection(path: Path, spec: Any) -> nn.Linear:
    """Rebuild the linear head described by ``spec`` from ``path/projection.safetensors``."""
    from safetensors.torch import load_file

    if not isinstance(spec, dict) or not {"in_features", "out_features"} <= set(spec):
        raise EncoderLoadError(f"{path / CONFIG_FILE}: encoder.projection must give in_features and out_features, got {spec!r}")
    weights_file = path / PROJECTION_FILE
    if not weights_file.is_file():
        raise EncoderLoadError(f"{path / CONFIG_FILE} declares a projection head, but {weights_file} is missing")
    projection = nn.Linear(int(spec["in_features"]), int(spec["out_features"]), bias=bool(spec.get("bias", True)))
    state = load_file(str(weights_file))
    try:
        projection.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise EncoderLoadError(f"{weights_file} does not match the declared projection {spec}: {exc}") from exc
    return projection


class Encoder(nn.Module, TrainableEncoder):
    """Transformer + pooling (+ optional linear projection) (+ optional L2 normalisation).

    ``projection`` is an optional ``nn.Linear`` applied to the pooled vector before
    normalisation; frozen-encoder training learns one and saves it with the model
    (``projection.safetensors``), so a loaded model computes the same embeddings.
    """

    kind = "transformers"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        pooling: str = "mean",
        normalize: bool = False,
        max_length: int = 128,
        source: str | None = None,
        projection: nn.Linear | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = require_choice("pooling", pooling, POOLING_MODES)
        if not isinstance(normalize, bool):
            raise InvalidArgumentTypeError(f"normalize must be a bool, got {normalize!r}")
        self.normalize = normalize
        self.max_length = require_positive_int("max_length", max_length)
        self.source = source
        hidden = getattr(getattr(model, "config", None), "hidden_size", None)
        if projection is not None:
            if not isinstance(projection, nn.Linear):
                raise InvalidArgumentTypeError(f"projection must be a torch.nn.Linear or None, got {type(projection).__name__}")
            if isinstance(hidden, int) and projection.in_features != hidden:
                raise InvalidArgumentError(
                    f"projection.in_features={projection.in_features} must equal the model's hidden_size={hidden}"
                )
        self.projection = projection
        model_max = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if isinstance(model_max, int) and self.max_length > model_max:
            raise InvalidArgumentError(f"max_length={max_length} exceeds the model's max_position_embeddings={model_max}")

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
        *,
        pooling: str | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
        device: str | torch.device | None = None,
    ) -> Encoder:
        """Load from a model or run folder, a Hugging Face id, or ``"default"`` (packaged all-MiniLM-L6-v2).

        Settings come, in order of precedence, from the arguments, the folder's
        ``metric_sim.json``, a sentence-transformers layout, then defaults (mean, no
        normalisation, 128 tokens).
        """
        source = resolve_model_source(name_or_path)
        return cls.from_source(source, read_encoder_settings(source), pooling=pooling, normalize=normalize, max_length=max_length,
                               device=device)

    @classmethod
    def from_source(
        cls,
        source: ModelSource,
        settings: dict[str, Any],
        *,
        pooling: str | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
        device: str | torch.device | None = None,
    ) -> Encoder:
        from transformers import AutoModel, AutoTokenizer

        # A sentence-transformers layout gives the defaults; metric_sim.json settings win over it.
        settings = {**(_sentence_transformers_layout(source.folder) if source.folder else {}), **settings}
        try:
            model = _load_backbone(AutoModel, source.location)
            tokenizer = AutoTokenizer.from_pretrained(source.location)
        except OSError as exc:
            raise EncoderLoadError(
                f"could not load encoder {source.name!r}: it is not a local model folder, and loading it from the "
                f"Hugging Face hub failed (offline, or no such model id). Pass a local folder or 'default'. "
                f"Cause: {exc}"
            ) from exc
        projection = settings.get("projection")
        encoder = cls(
            model,
            tokenizer,
            pooling=pooling if pooling is not None else settings.get("pooling", "mean"),
            normalize=normalize if normalize is not None else bool(settings.get("normalize", False)),
            max_length=max_length if max_length is not None else int(settings.get("max_length", 128)),
            source=source.name,
            projection=_load_projection(source.folder, projection) if projection and source.folder else None,
        )
        if device is not None:
            encoder.to(device)
        return encoder

    def config_dict(self) -> dict[str, Any]:
        config: dict[str, Any] = {"pooling": self.pooling, "normalize": self.normalize, "max_length": self.max_length}
        if self.projection is not None:  # only when present: older folders and fingerprints stay unchanged
            config["projection"] = _projection_spec(self.projection)
        return config

    def save(self, directory: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
        """Save weights (safetensors), tokenizer and ``metric_sim.json`` atomically.

        The folder is written under a temporary name next to the target and renamed
        into place, so a crash never leaves a half-written model behind. ``extra``
        entries (metric, calibrator, ...) are merged into ``metric_sim.json``.
        """
        target = Path(directory).expanduser().resolve()
        with atomic_dir(target) as staging:
            self.model.save_pretrained(staging, safe_serialization=True)
            self.tokenizer.save_pretrained(staging)
            if self.projection is not None:
                from safetensors.torch import save_file

                state = {k: v.detach().to("cpu").contiguous() for k, v in self.projection.state_dict().items()}
                save_file(state, str(staging / PROJECTION_FILE), metadata={"format": "pt"})
            self.write_model_config(staging, extra)
        return target

    @property
    def embedding_dim(self) -> int:
        if self.projection is not None:
            return int(self.projection.out_features)
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def fingerprint(self) -> str:
        """sha256 of the weights, model config and pooling settings: identifies this exact encoder."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.config_dict(), sort_keys=True).encode())
        config = {
            k: v
            for k, v in self.model.config.to_dict().items()
            if not k.startswith("_") and k not in _VOLATILE_CONFIG_KEYS
        }
        digest.update(json.dumps(config, sort_keys=True, default=str).encode())
        tensors = dict(self.model.state_dict())
        if self.projection is not None:
            tensors.update({f"projection.{k}": v for k, v in self.projection.state_dict().items()})
        for name, tensor in sorted(tensors.items()):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
        return digest.hexdigest()

    @property
    def pooled_dim(self) -> int:
        return int(self.model.config.hidden_size)

    def base_encoder(self) -> Encoder:
        """This encoder without projection head and normalisation; shares the weights."""
        return Encoder(self.model, self.tokenizer, pooling=self.pooling, normalize=False,
                       max_length=self.max_length, source=self.source)

    def layer_groups(self) -> list[list[str]] | None:
        """Parameter names bottom-up (as in ``named_parameters``): the embeddings, then each transformer
        layer (:func:`transformer_layer_groups`); what ``freeze_layers`` freezes from the bottom."""
        return transformer_layer_groups(self.model, "model.")

    def check_items(self, items: Any, name: str = "items") -> list[str]:
        return require_texts(name, items)

    def item_sizes(self, items: Sequence[str]) -> np.ndarray:
        """Token counts after truncation: the key ``encode`` sorts by."""
        return token_counts(self.tokenizer, items, self.max_length)

    def collate(self, items: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenize(items)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenize with dynamic padding to the longest text in ``texts`` (truncated at max_length)."""
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **features: torch.Tensor) -> torch.Tensor:
        if self.training:
            # A training batch is padded to its longest item; embedding it in length groups (the same
            # vectors up to float rounding) cuts the padded compute and the activations kept for backward.
            groups, lengths = _right_padded_groups(attention_mask)
            if len(groups) > 1:
                parts, rows = [], []
                for group in groups:
                    width = int(lengths[group[-1]])  # rows ascend in length: the last is the longest
                    index = torch.from_numpy(group).to(input_ids.device)
                    sliced = {k: _rows_and_width(v, index, width, input_ids.shape) for k, v in features.items()}
                    parts.append(self._embed(input_ids[index, :width], attention_mask[index, :width], **sliced))
                    rows.append(index)
                # back to the caller's row order (an index_select: gradients flow to every part)
                return torch.cat(parts).index_select(0, torch.argsort(torch.cat(rows)))
        return self._embed(input_ids, attention_mask, **features)

    def _embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **features: torch.Tensor) -> torch.Tensor:
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, **features)
        embeddings = pool(outputs.last_hidden_state, attention_mask, self.pooling)
        if self.projection is not None:
            embeddings = self.projection(embeddings)
        if self.normalize:
            embeddings = nn.functional.normalize(embeddings, p=2, dim=-1)
        return embeddings

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        show_progress: bool = False,
        device: str | torch.device | None = None,
    ) -> np.ndarray:
        """Embed ``texts``; returns float32 array (len(texts), dim) in input order.

        Texts are sorted by token count so each batch pads to a similar length.
        """
        if device is not None:
            self.to(device)
        target = self.device

        def run(batch: dict[str, np.ndarray]) -> np.ndarray:
            features = {k: torch.from_numpy(v).to(target) for k, v in batch.items()}
            return self(**features).float().cpu().numpy()

        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode(), autocast(self.inference_precision, target.type):
                return encode_sorted_batches(
                    texts,
                    self.tokenizer,
                    run,
                    dim=self.embedding_dim,
                    max_length=self.max_length,
                    batch_size=batch_size,
                    show_progress=show_progress,
                )
        finally:
            self.train(was_training)
