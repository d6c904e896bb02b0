"""Encoding speed of the PyTorch text encoder against batch size and attention implementation.

One process, 2 torch threads, 6,000 QQP test questions drawn with seed 0; every (batch size,
attention) cell encodes them once per round, rounds alternate the cell order (forward, reverse,
forward), and the median sentences/s of the 3 rounds is reported. ``encode`` sorts texts by
token count, so a larger batch spans a wider length range and pads more.

    PYTHONPATH=$PWD python benchmarks/encode_batch_probe.py
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from metric_sim import Encoder, load_preset

BATCH_SIZES = (32, 64, 128, 256, 512)
ATTENTION = ("sdpa", "eager")
ROUNDS = 3


def main() -> None:
    torch.set_num_threads(2)
    test = load_preset("qqp", split="test")
    texts = sorted(set(test.texts_a) | set(test.texts_b))
    rng = np.random.default_rng(0)
    texts = [texts[i] for i in rng.choice(len(texts), 6000, replace=False)]
    encoder = Encoder.from_pretrained("default", max_length=128)
    cells = [(size, attention) for attention in ATTENTION for size in BATCH_SIZES]
    results: dict[str, list[float]] = {f"{size}/{attention}": [] for size, attention in cells}
    encoder.encode(texts[:256])  # warm-up
    for round_ in range(ROUNDS):
        for size, attention in cells if round_ % 2 == 0 else cells[::-1]:
            encoder.model.config._attn_implementation = attention  # read by every layer at call time
            started = time.perf_counter()
            encoder.encode(texts, batch_size=size)
            rate = len(texts) / (time.perf_counter() - started)
            results[f"{size}/{attention}"].append(rate)
            print(size, attention, round(rate, 1), flush=True)
    print(json.dumps({cell: float(np.median(rates)) for cell, rates in results.items()}, indent=1))


if __name__ == "__main__":
    main()
