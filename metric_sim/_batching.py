"""Length-sorted batched encoding shared by the PyTorch and ONNX Runtime encoders (L0: no torch).

Texts are tokenized once without padding, sorted by token count (longest first) and
cut into batches, so each batch pads only to its own longest text: padding is wasted
compute. Results are written back in the caller's order. The backend only supplies
``run(batch) -> embeddings`` on NumPy int64 arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from metric_sim._validation import require_positive_int, require_texts

BatchRunner = Callable[[dict[str, np.ndarray]], np.ndarray]


def pad_batch(
    input_ids: Sequence[Sequence[int]],
    rows: np.ndarray,
    pad_id: int,
    token_type_ids: Sequence[Sequence[int]] | None = None,
) -> dict[str, np.ndarray]:
    """Right-pad the token lists ``input_ids[rows]`` into int64 arrays (batch, longest)."""
    width = max(len(input_ids[i]) for i in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    batch = {"input_ids": ids, "attention_mask": mask}
    if token_type_ids is not None:
        batch["token_type_ids"] = np.zeros((len(rows), width), dtype=np.int64)
    for j, i in enumerate(rows):
        n = len(input_ids[i])
        ids[j, :n] = input_ids[i]
        mask[j, :n] = 1
        if token_type_ids is not None:
            batch["token_type_ids"][j, :n] = token_type_ids[i]
    return batch


def encode_sorted_batches(
    texts: Any,
    tokenizer: Any,
    run: BatchRunner,
    *,
    dim: int,
    max_length: int,
    batch_size: int = 64,
    show_progress: bool = False,
) -> np.ndarray:
    """Embed ``texts`` with ``run`` on length-sorted padded batches; float32 (len(texts), dim) in input order."""
    texts = require_texts("texts", texts)
    batch_size = require_positive_int("batch_size", batch_size)
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    tokenized = tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    encoded = tokenized["input_ids"]
    types = tokenized.get("token_type_ids")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
    order = np.argsort(-lengths, kind="stable")
    out = np.empty((len(texts), dim), dtype=np.float32)
    progress = None
    if show_progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=len(texts), desc="encode", unit="text")
    try:
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = run(pad_batch(encoded, rows, pad_id, types))
            if progress is not None:
                progress.update(len(rows))
    finally:
        if progress is not None:
            progress.close()
    return out
