"""Keeping a fine-tuned encoder near what its base model knew: the L2-SP penalty and frozen lower layers.

``l2sp_weight`` (Li, Grandvalet & Davoine, ICML 2018, "Explicit inductive bias for transfer
learning with convolutional networks") adds ``(l2sp_weight / 2) * sum ||theta - theta_0||^2``
to the loss, where ``theta_0`` are the weights the run started from. Only parameters of the
starting model count: a head the run initialises (a new projection head, the fusion head of
the ``multimodal`` starting point) has no pretrained value to stay near, and gets the plain
``weight_decay`` of the optimiser, as in the paper. Frozen parameters do not move, so they
are left out as well.

``freeze_layers: N`` fixes the bottom of the encoder: the embeddings and the lowest N
transformer layers of a text encoder, the stem and the lowest N stages of an image backbone
(the lowest N conv blocks of the small CNN), both towers of a multimodal encoder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metric_sim.errors import ConfigError, TrainingError
from metric_sim.layout import TRAIN_CONFIG_FILE
from metric_sim.schema import SHA256_HEX, SavedFields, read_json_file
from metric_sim.training.layers import LAYERS_SUPPORTED, layered_parts

__all__ = ["REFERENCE_KEY", "L2SP", "FrozenLayers", "build_l2sp", "check_l2sp_reference", "freeze_lower_layers",
           "starting_parameter_ids"]

# Where the run section of train_config.json records the starting weights the penalty pulls towards.
REFERENCE_KEY = "l2sp_reference"
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class L2SP:
    """``(weight / 2) * sum ||theta - theta_0||^2`` over ``named`` parameters; ``theta_0`` copied now.

    The copy is detached and lives on the parameters' device (moved there, exactly, if the
    model moves after the snapshot). Under torchrun each rank computes the penalty on its own
    replica, whose weights are identical on every rank: the gradients DDP averages are then
    the same ``weight * (theta - theta_0)`` on every rank, as in one process.
    """

    def __init__(self, weight: float, named: Iterable[tuple[str, nn.Parameter]]) -> None:
        pairs = list(named)
        self.weight = float(weight)
        self.names = [name for name, _ in pairs]
        self.parameters = [parameter for _, parameter in pairs]
        self.reference = [parameter.detach().clone() for parameter in self.parameters]

    def __call__(self) -> torch.Tensor:
        if self.reference[0].device != self.parameters[0].device:  # the Trainer placed the model after the snapshot
            self.reference = [ref.to(p.device) for ref, p in zip(self.reference, self.parameters, strict=True)]
        total = torch.stack([(p - ref).pow(2).sum() for p, ref in zip(self.parameters, self.reference, strict=True)])
        return 0.5 * self.weight * total.sum()

    def record(self) -> dict[str, Any]:
        """What identifies ``theta_0``: sha256 of every name, dtype, shape and value, and the counts."""
        digest = hashlib.sha256()
        for name, tensor in zip(self.names, self.reference, strict=True):
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return {"sha256": digest.hexdigest(), "tensors": len(self.names),
                "values": int(sum(t.numel() for t in self.reference))}


def starting_parameter_ids(encoder: nn.Module, *, fresh_head: bool) -> set[int]:
    """The ids of the parameters the encoder starts with; its ``projection`` left out when ``fresh_head``
    (a head just initialised, not learned: e.g. the identity fusion of the ``multimodal`` starting point)."""
    head = getattr(encoder, "projection", None) if fresh_head else None
    skipped = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    return {id(p) for p in encoder.parameters() if id(p) not in skipped}


def build_l2sp(weight: float, model: nn.Module, starting: set[int]) -> L2SP | None:
    """The penalty over ``model``'s trainable parameters that were in the starting model (None when off)."""
    if not weight:
        return None
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad and id(p) in starting]
    if not named:
        raise ConfigError(f"l2sp_weight={weight!r}: no trainable parameter of the starting model to keep near "
                          "its starting value (a frozen encoder under a newly initialised head); set it to 0")
    return L2SP(weight, named)


def check_l2sp_reference(l2sp: L2SP, run_dir: Path) -> None:
    """On resume: the rebuilt starting weights must be the ones the run started from.

    The cheapest correct way. A resumed run rebuilds its starting encoder from ``model``
    (a saved folder, a packaged model, a seeded random start), before the Trainer loads the
    checkpoint, so ``theta_0`` is recovered without storing a second copy of every weight;
    the run folder keeps only its sha256 (``run.l2sp_reference`` in train_config.json). If
    the source changed since (a folder overwritten, a hub model updated, a caller passing
    the already trained encoder) the digests differ and the run stops instead of pulling
    towards other weights.
    """
    path = run_dir / TRAIN_CONFIG_FILE
    run = SavedFields(read_json_file(path, TrainingError), path, TrainingError).section("run", required=False)
    saved = run.section(REFERENCE_KEY, required=False) if run is not None else None
    if saved is None:
        raise TrainingError(f"--resume: {path} records no {REFERENCE_KEY}, so the starting weights of the L2-SP "
                            "penalty cannot be checked; start a new run")
    expected = saved.get("sha256", str, pattern=SHA256_HEX)
    found = l2sp.record()
    if found["sha256"] != expected:
        raise TrainingError(
            f"--resume: the starting weights rebuilt for l2sp_weight differ from the ones {run_dir} started with "
            f"(sha256 {found['sha256'][:12]}... over {found['tensors']} tensors, saved {expected[:12]}...): the "
            "model source changed, or the encoder given is not the untrained start; resume with the original one"
        )


class FrozenLayers:
    """Parameters set to ``requires_grad=False`` and batch norms kept in eval mode; :meth:`release` undoes both."""

    def __init__(self, encoder: nn.Module, names: set[str]) -> None:
        self.names = sorted(names)
        self.parameters = [p for name, p in encoder.named_parameters() if name in names]
        for parameter in self.parameters:
            parameter.requires_grad_(False)
        # A frozen batch norm would still update its running statistics in training mode, so the frozen
        # layers would compute another function after training: keep those in eval mode.
        self.hooks = [module.register_forward_pre_hook(_stay_in_eval)
                      for name, module in encoder.named_modules() if isinstance(module, _BATCH_NORMS)
                      and (own := [f"{name}.{n}" for n, _ in module.named_parameters(recurse=False)])
                      and all(n in names for n in own)]

    def release(self) -> None:
        for parameter in self.parameters:
            parameter.requires_grad_(True)
        for hook in self.hooks:
            hook.remove()
        self.hooks = []


def _stay_in_eval(module: nn.Module, inputs: Any) -> None:
    module.train(False)


def freeze_lower_layers(encoder: nn.Module, count: int) -> FrozenLayers | None:
    """Freeze the stem/embeddings and the lowest ``count`` layers (None when ``count`` is 0).

    Refused (``ConfigError`` naming ``freeze_layers``, the value and the depth) when ``count``
    exceeds the depth or the encoder cannot be split into layers.
    """
    if not count:
        return None
    names: set[str] = set()
    for label, prefix, groups in layered_parts(encoder):
        if groups is None:
            raise ConfigError(f"freeze_layers={count!r}: {label} cannot be split into layers (supported: "
                              f"{LAYERS_SUPPORTED})")
        depth = len(groups) - 1
        if count > depth:
            raise ConfigError(f"freeze_layers={count!r} exceeds the depth of {label}: {depth} layers")
        names.update(prefix + name for group in groups[: count + 1] for name in group)
    return FrozenLayers(encoder, names)
