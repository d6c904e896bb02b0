"""Encoding order and batching, shared by every encoder and by sharded encoding (no torch).

Items are embedded in *encoding order*: size descending (token count for texts), ties
in input order. Cutting that order into batches of ``batch_size`` makes each batch pad
only to its own largest item (padding is wasted compute), and it is the one rule that
lets sharded encoding cut exactly the batches one process cuts, so the vectors are
bit-identical. Results are written back in the caller's order.

Texts are tokenized once without padding; each batch is then right-padded into int64
NumPy arrays, which the PyTorch and ONNX Runtime text encoders both consume.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from metric_sim.validation import require_positive_int, require_texts

BatchRunner = Callable[[dict[str, np.ndarray]], np.ndarray]
RowsEmbedder = Callable[[np.ndarray], np.ndarray]
_TOKENIZE_CHUNK = 10_000  # texts tokenized at a time when only their lengths are needed (bounds memory)
# What one more forward pass costs, in padded tokens: a training batch is split into length groups
# only where each split saves more padding than this (Python and kernel-launch overhead of a pass).
SPLIT_COST_TOKENS = 64


def encoding_order(sizes: Any) -> np.ndarray:
    """Item rows in encoding order: size descending, ties in input order (a stable sort)."""
    return np.argsort(-np.asarray(sizes, dtype=np.int64), kind="stable")


def embed_in_order(
    n_items: int,
    sizes: Any,
    embed_rows: RowsEmbedder,
    *,
    dim: int,
    batch_size: int = 64,
    show_progress: bool = False,
    unit: str = "item",
) -> np.ndarray:
    """float32 ``(n_items, dim)``: ``embed_rows(rows)`` on consecutive batches of the encoding order."""
    batch_size = require_positive_int("batch_size", batch_size)
    out = np.empty((n_items, dim), dtype=np.float32)
    if n_items == 0:
        return out
    order = encoding_order(sizes)
    progress = None
    if show_progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=n_items, desc="encode", unit=unit)
    try:
        for start in range(0, n_items, batch_size):
            rows = order[start : start + batch_size]
            out[rows] = embed_rows(rows)
            if progress is not None:
                progress.update(len(rows))
    finally:
        if progress is not None:
            progress.close()
    return out


def padding_groups(lengths: Any, split_cost: int = SPLIT_COST_TOKENS) -> list[np.ndarray]:
    """Rows grouped so that padding each group to its own longest costs the fewest tokens.

    A training batch arrives padded to its longest item; its items are then embedded in
    groups of similar length, each padded only to its own longest, which saves compute and
    the activation memory held for the backward pass. With ``lengths`` sorted, the best
    split into consecutive runs minimises ``sum(rows * longest) + split_cost * groups``
    (an exact dynamic programme, O(n^2) in NumPy; n is a batch's unique items). Each
    group holds row indices in ascending length; a single group means "do not split".
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = int(lengths.shape[0])
    order = np.argsort(lengths, kind="stable")
    if n < 2 or lengths[order[0]] == lengths[order[-1]]:
        return [order]
    sorted_lengths = lengths[order]
    best = np.zeros(n + 1, dtype=np.int64)  # best[j]: cheapest cost of the j shortest rows
    start = np.zeros(n + 1, dtype=np.int64)  # start[j]: where the last group of that split begins
    for j in range(1, n + 1):
        firsts = np.arange(j)
        costs = best[:j] + (j - firsts) * sorted_lengths[j - 1] + split_cost
        i = int(np.argmin(costs))
        best[j], start[j] = costs[i], i
    groups: list[np.ndarray] = []
    end = n
    while end > 0:
        groups.append(order[start[end]:end])
        end = int(start[end])
    return groups[::-1]


def token_counts(tokenizer: Any, texts: Sequence[str], max_length: int) -> np.ndarray:
    """Token count of each text after truncation: the size key of text encoders."""
    counts = np.empty(len(texts), dtype=np.int64)
    for start in range(0, len(texts), _TOKENIZE_CHUNK):
        chunk = list(texts[start : start + _TOKENIZE_CHUNK])
        ids = tokenizer(chunk, truncation=True, max_length=max_length, padding=False)["input_ids"]
        counts[start : start + len(chunk)] = [len(x) for x in ids]
    return counts


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
    return embed_in_order(
        len(texts),
        lengths,
        lambda rows: run(pad_batch(encoded, rows, pad_id, types)),
        dim=dim,
        batch_size=batch_size,
        show_progress=show_progress,
        unit="text",
    )
