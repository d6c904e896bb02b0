"""``OnnxEncoder``: encode with ONNX Runtime from an exported folder, without torch.

The exported graph (``onnx/model.onnx``, written by ``metric_sim.export``) maps
``input_ids`` + ``attention_mask`` (+ ``token_type_ids`` where the model uses them)
straight to the final embedding, pooling and normalisation included, so this class
only tokenizes, batches (the same length-sorted batching as ``Encoder.encode``) and
runs the session. Nothing here imports torch: the transformers tokenizer works
without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metric_sim.encoders.base import ItemEncoder, read_encoder_settings
from metric_sim.encoders.batching import encode_sorted_batches, token_counts
from metric_sim.errors import OnnxModelError
from metric_sim.layout import (
    CONFIG_FILE,
    ONNX_DIR,
    ONNX_FP32,
    ONNX_INT8,
    ModelSource,
    resolve_model_source,
)
from metric_sim.storage import atomic_dir, sha256_file
from metric_sim.validation import require_positive_int, require_texts

_INSTALL_ONNX = "pip install 'metric-sim[onnx]'"


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise OnnxModelError(f"backend='onnx' needs onnxruntime. Install it with: {_INSTALL_ONNX}") from exc
    return onnxruntime


class OnnxEncoder(ItemEncoder):
    """Tokenizer + ONNX Runtime session: the text encoder contract without torch.

    ``save`` writes a folder with ``onnx/model.onnx``, the tokenizer and
    ``metric_sim.json`` (kind ``onnx``), so a model built on this encoder saves and
    loads like any other. Its fingerprint hashes the graph file and the settings: it
    differs from the PyTorch encoder it was exported from, since the two compute the
    same vectors only within the export tolerance.
    """

    kind = "onnx"

    def __init__(
        self,
        session: Any,
        tokenizer: Any,
        *,
        pooling: str,
        normalize: bool,
        max_length: int,
        source: str | None = None,
        model_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.session = session
        self.model_file = None if model_file is None else Path(model_file)
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

        ``path`` is an exported folder, a folder saved from an ``OnnxEncoder``, or a run
        folder holding one. ``threads`` sets ONNX Runtime's intra-op thread count.
        """
        _import_onnxruntime()  # fail early with the install command
        source = resolve_model_source(path)
        if source.config_file is None:
            raise OnnxModelError(f"{source.location} is not an exported metric-sim model: no {CONFIG_FILE}")
        settings = read_encoder_settings(source)
        return cls.from_source(source, settings, quantized=quantized, max_length=max_length, threads=threads,
                               providers=providers)

    @classmethod
    def from_source(
        cls,
        source: ModelSource,
        settings: dict[str, Any],
        *,
        quantized: bool = False,
        max_length: int | None = None,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> OnnxEncoder:
        if source.folder is None or source.config_file is None:
            raise OnnxModelError(f"{source.name} is not an exported metric-sim model folder: no {CONFIG_FILE}")
        folder = source.folder
        model_file = folder / ONNX_DIR / (ONNX_INT8 if quantized else ONNX_FP32)
        if not model_file.is_file():
            flags = "--onnx --quantize int8" if quantized else "--onnx"
            raise OnnxModelError(f"no ONNX model at {model_file}: export with `metric-sim export ... {flags}`")
        from transformers import AutoTokenizer

        settings = dict(settings)
        if max_length is not None:
            settings["max_length"] = max_length
        encoder = cls.from_file(model_file, AutoTokenizer.from_pretrained(str(folder)), settings, threads=threads,
                                providers=providers)
        encoder.source = source.name
        return encoder

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
        # ONNX Runtime's default today; explicit so a changed default cannot drop its fusions.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
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
            model_file=model_file,
        )

    @property
    def embedding_dim(self) -> int:
        return self._dim

    def config_dict(self) -> dict[str, Any]:
        return {"pooling": self.pooling, "normalize": self.normalize, "max_length": self.max_length}

    def check_items(self, items: Any, name: str = "items") -> list[str]:
        return require_texts(name, items)

    def item_sizes(self, items: Sequence[str]) -> np.ndarray:
        return token_counts(self.tokenizer, items, self.max_length)

    def _require_model_file(self) -> Path:
        if self.model_file is None or not self.model_file.is_file():
            raise OnnxModelError(
                f"this ONNX encoder's graph file {self.model_file} is not available; build it with "
                "OnnxEncoder.from_file(path, ...) or from_pretrained(folder)"
            )
        return self.model_file

    def fingerprint(self) -> str:
        """sha256 of the settings and the graph file (weights included)."""
        digest = hashlib.sha256(json.dumps(self.config_dict(), sort_keys=True).encode())
        digest.update(sha256_file(self._require_model_file()).encode())
        return digest.hexdigest()

    def save(self, directory: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
        """Write ``onnx/model.onnx``, the tokenizer and ``metric_sim.json`` (kind ``onnx``) atomically."""
        graph = self._require_model_file()
        target = Path(directory).expanduser().resolve()
        with atomic_dir(target) as staging:
            (staging / ONNX_DIR).mkdir()
            shutil.copyfile(graph, staging / ONNX_DIR / ONNX_FP32)
            self.tokenizer.save_pretrained(staging)
            self.write_model_config(staging, extra)
        return target

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
