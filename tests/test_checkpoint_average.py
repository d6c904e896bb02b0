"""benchmarks/checkpoint_average.py: the uniform average of checkpoint weights, against a NumPy mean."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import checkpoint_average  # noqa: E402

from tests.conftest import pair_dataset  # noqa: E402


def _checkpoint(folder: Path, step: int, tensors: dict[str, torch.Tensor]) -> Path:
    path = folder / f"checkpoint-{step}" / "model.safetensors"
    path.parent.mkdir(parents=True)
    save_file(tensors, str(path))
    return path


def test_average_is_the_elementwise_mean_of_every_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [{"a.weight": rng.normal(size=(3, 4)).astype(np.float32), "a.bias": rng.normal(size=4).astype(np.float32)}
              for _ in range(3)]
    paths = [_checkpoint(tmp_path, 100 * (i + 1), {k: torch.from_numpy(v) for k, v in a.items()})
             for i, a in enumerate(arrays)]
    averaged = checkpoint_average.average_state_dicts(paths)
    for name in ("a.weight", "a.bias"):
        expected = np.mean([a[name] for a in arrays], axis=0)
        np.testing.assert_allclose(averaged[name].numpy(), expected, rtol=1e-6)
    alone = checkpoint_average.average_state_dicts(paths[1:2])
    np.testing.assert_array_equal(alone["a.weight"].numpy(), arrays[1]["a.weight"])


def test_steps_are_read_in_numeric_order_and_mismatched_checkpoints_are_refused(tmp_path):
    one = _checkpoint(tmp_path, 50, {"w": torch.zeros(2)})
    _checkpoint(tmp_path, 500, {"w": torch.ones(2)})
    _checkpoint(tmp_path, 100, {"w": torch.ones(2)})
    (tmp_path / "checkpoint-tmp").mkdir()  # not a step: ignored
    assert checkpoint_average.checkpoint_steps(tmp_path) == [50, 100, 500]
    other = _checkpoint(tmp_path / "b", 1, {"v": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"checkpoint-1/model.safetensors: tensors \['v', 'w'\] are not in every"):
        checkpoint_average.average_state_dicts([one, other])
    wide = _checkpoint(tmp_path / "c", 1, {"w": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"tensor w has shape \(3,\), \(2,\) elsewhere"):
        checkpoint_average.average_state_dicts([one, wide])
    with pytest.raises(ValueError, match="no checkpoint"):
        checkpoint_average.average_state_dicts([])


def test_the_system_and_checkpoint_interval_are_checked():
    with pytest.raises(SystemExit, match=r"--system must be a metric-sim system .*got 'st_cosent'"):
        checkpoint_average.main(["--work", "w", "--system", "st_cosent"])
    with pytest.raises(SystemExit, match=r"--eval-steps must be >= 1, got 0"):
        checkpoint_average.main(["--work", "w", "--eval-steps", "0"])


def test_cross_encoder_rows_keep_pair_order_and_labels_as_floats():
    import cross_encoder_reference

    pairs = pair_dataset([("a", "x", 1, "1", "2"), ("b", "y", 0, "3", "4"), ("c", "z", 1, "5", "6")])
    rows = cross_encoder_reference.pair_rows(pairs)
    assert rows == {"text_a": ["a", "b", "c"], "text_b": ["x", "y", "z"], "label": [1.0, 0.0, 1.0]}
    assert all(isinstance(y, float) for y in rows["label"])  # BinaryCrossEntropyLoss needs float targets
