"""``OnnxEncoder``: encode with ONNX Runtime from an exported folder, without torch.

The exported graph (``onnx/model.onnx``, written by ``metric_sim.export``) maps
``input_ids`` + ``attention_mask`` (+ ``token_type_ids`` where the model uses them)
straight to the final embedding, pooling and normalisation included, so this class
only tokenizes, batches (the same length-sorted batching as ``Encoder.encode``) and
runs the session. Nothing here imports torch: the transformers tokenizer works
without it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metric_sim._batching import encode_sorted_batches
from metric_sim._io import CONFIG_FILE, read_json
from metric_sim._validation import require_positive_int

ONNX_DIR = "onnx"
ONNX_FP32 = "model.onnx"
ONNX_INT8 = "model_int8.onnx"
_INSTALL_ONNX = "pip install 'metric-sim[onnx]'"


class OnnxModelError(OSError):
    """An exported folder has no usable ONNX model; the message says what is missing."""


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise OnnxModelError(f"backend='onnx' needs onnxruntime. Install it with: {_INSTALL_ONNX}") from exc
    return onnxruntime


class OnnxEncoder:
    """Tokenizer + ONNX Runtime session with the same ``encode`` contract as ``Encoder``."""

    def __init__(
        self,
        session: Any,
        tokenizer: Any,
        *,
        pooling: str,
        normalize: bool,
        max_length: int,
        source: str | None = None,
    ) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = require_positive_int("max_length", max_length)
        self.source = source
        self.input_names = [i.name for i in session.get_inputs()]
        missing = {"input_ids", "attention_mask"} - set(self.input_names)
        if missing:
            raise OnnxModelError(f"ONNX model {source} lacks inputs {sorted(missing)}; it has {self.input_names}")
        dim = session.get_outputs()[0].shape[-1]
        if not isinstance(dim, int):
            raise OnnxModelError(f"ONNX model {source}: output dimension is not fixed (shape {session.get_outputs()[0].shape})")
        self._dim = dim

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        quantized: bool = False,
        max_length: int | None = None,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> OnnxEncoder:
        """Load ``path/onnx/model.onnx`` (``quantized=True``: ``model_int8.onnx``) and the tokenizer.

        ``threads`` sets ONNX Runtime's intra-op thread count (default: its own choice).
        """
        _import_onnxruntime()  # fail early with the install command
        folder = Path(path).expanduser()
        cfg_file = folder / CONFIG_FILE
        if not cfg_file.is_file():
            raise OnnxModelError(f"{folder} is not an exported metric-sim model: no {CONFIG_FILE}")
        cfg = read_json(cfg_file)
        model_file = folder / ONNX_DIR / (ONNX_INT8 if quantized else ONNX_FP32)
        if not model_file.is_file():
            flags = "--onnx --quantize int8" if quantized else "--onnx"
            raise OnnxModelError(f"no ONNX model at {model_file}: export with `metric-sim export ... {flags}`")
        from transformers import AutoTokenizer

        settings = dict(cfg.get("encoder", {}))
        if max_length is not None:
            settings["max_length"] = max_length
        return cls.from_file(model_file, AutoTokenizer.from_pretrained(str(folder)), settings, threads=threads, providers=providers)

    @classmethod
    def from_file(
        cls,
        model_file: str | os.PathLike[str],
        tokenizer: Any,
        settings: dict[str, Any],
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> OnnxEncoder:
        """Session on one .onnx file with a given tokenizer and ``metric_sim.json`` encoder settings."""
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = require_positive_int("threads", threads)
        session = ort.InferenceSession(str(model_file), options, providers=list(providers or ["CPUExecutionProvider"]))
        return cls(
            session,
            tokenizer,
            pooling=str(settings.get("pooling", "mean")),
            normalize=bool(settings.get("normalize", False)),
            max_length=int(settings.get("max_length", 128)),
            source=str(model_file),
        )

    @property
    def embedding_dim(self) -> int:
        return self._dim

    def config_dict(self) -> dict[str, Any]:
        return {"pooling": self.pooling, "normalize": self.normalize, "max_length": self.max_length}

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Embed one padded int64 batch; feeds only the inputs the graph declares."""
        # A graph with token_type_ids gets zeros when the tokenizer gives none: BERT's own default.
        feed = {name: batch[name] if name in batch else np.zeros_like(batch["input_ids"]) for name in self.input_names}
        return self.session.run(None, feed)[0]

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """Embed ``texts``; float32 array (len(texts), dim) in input order."""
        return encode_sorted_batches(
            texts,
            self.tokenizer,
            self.run,
            dim=self.embedding_dim,
            max_length=self.max_length,
            batch_size=batch_size,
            show_progress=show_progress,
        )
