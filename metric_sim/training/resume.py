"""Starting a run folder, or continuing one: its saved config and its last complete checkpoint."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from metric_sim.errors import ConfigError, InvalidArgumentTypeError, MissingFileError, TrainingError
from metric_sim.layout import CHECKPOINT_DIR, MODEL_DIR, TRAIN_CONFIG_FILE
from metric_sim.schema import SavedFields, read_json_file
from metric_sim.training.config import TrainConfig

__all__ = ["checkpoint_step", "has_checkpoint", "last_complete_checkpoint", "resume_config", "start_or_resume"]

logger = logging.getLogger(__name__)


def start_or_resume(config: TrainConfig | None, run_dir: Path, resume: bool) -> tuple[TrainConfig, Path | None]:
    """The config to run and the checkpoint to continue from (None for a new run).

    A new run needs a config and a folder without a model or checkpoints; a resumed
    one takes the saved config (``config`` may be None, or must equal it).
    """
    checkpoints = run_dir / CHECKPOINT_DIR
    if resume:
        config = resume_config(run_dir, config)
        resume_from = last_complete_checkpoint(checkpoints)
        if resume_from is None:
            raise MissingFileError(f"--resume: no complete checkpoint in {checkpoints} to resume from")
        logger.info("resuming from %s", resume_from)
        return config, resume_from
    if config is None:
        raise InvalidArgumentTypeError("train() needs a TrainConfig (or resume=True with a run folder)")
    if (run_dir / MODEL_DIR).exists() or has_checkpoint(checkpoints):
        raise TrainingError(f"{run_dir} already holds a run (checkpoints or a model); pass --resume to continue it, "
                            "or choose another --out")
    return config, None


def resume_config(run_dir: Path, config: TrainConfig | None) -> TrainConfig:
    """The config saved in ``run_dir``; ``config``, if given, must equal it."""
    saved_file = run_dir / TRAIN_CONFIG_FILE
    if not saved_file.is_file():
        raise MissingFileError(f"--resume: {saved_file} not found; is {run_dir} a run folder?")
    saved = read_json_file(saved_file, ConfigError)
    SavedFields(saved, saved_file, ConfigError).section("run", required=False)  # the results of the run so far
    try:
        saved_config = TrainConfig.from_dict({k: v for k, v in saved.items() if k != "run"})
    except (ValueError, TypeError) as exc:  # InvalidArgument(Type)Error and ConfigError among them
        raise ConfigError(f"{saved_file}: {exc}") from None
    if config is not None:
        ours, theirs = config.to_dict(), saved_config.to_dict()
        # Over both key sets: a key saved only when set (auxiliary_losses) may be on one side alone.
        differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        if differ:
            raise TrainingError(
                f"--resume: the config differs from the one {run_dir} was started with in {differ}; "
                "resume with the same config (or omit --config to reuse the saved one)"
            )
    return saved_config


def has_checkpoint(checkpoints: Path) -> bool:
    return checkpoints.is_dir() and any(p.name.startswith("checkpoint-") for p in checkpoints.iterdir())


def checkpoint_step(path: str | None) -> int | None:
    """The step of a ``checkpoint-<step>`` folder name (None for anything else)."""
    match = re.search(r"checkpoint-(\d+)$", str(path or ""))
    return int(match.group(1)) if match else None


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest checkpoint that was written to the end.

    The Trainer writes ``trainer_state.json`` last, so a process killed while saving
    leaves a folder without it; that one is skipped (with a warning) instead of
    failing the resume.
    """
    if not checkpoints.is_dir():
        return None
    found = sorted(((checkpoint_step(p.name), p) for p in checkpoints.iterdir() if p.is_dir()),
                   key=lambda item: -1 if item[0] is None else item[0], reverse=True)
    for step, path in found:
        if step is None:
            continue
        if (path / "trainer_state.json").is_file():
            return path
        logger.warning("skipping incomplete checkpoint %s (no trainer_state.json: interrupted while saving)", path)
    return None
