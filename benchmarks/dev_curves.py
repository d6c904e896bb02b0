"""Dev AP against training step for the tuned grid cells of one or more ``quality.py --work`` folders.

Every fine-tuned run of the fair-peer mode evaluates dev every ``eval_steps`` and keeps its best
checkpoint; the curves are recorded in ``WORK/tuning.json`` (each grid cell's ``dev_curve``, one
per selection seed). Laid side by side, folders trained at different budgets (``--epochs``,
``--batch-size``, ``--lr-scheduler``) show where a longer or differently scheduled fine-tune
stops gaining, which one table row per run cannot.

    PYTHONPATH=$PWD python benchmarks/dev_curves.py --work runs/bench/qqp_rank2 runs/bench/qqp_3ep \\
        --systems ms_pair_ranking --png benchmarks/dev_curves_qqp_epochs.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fair_peers import lr_tag, system_grid_cells  # noqa: E402

from metric_sim.storage import atomic_file  # noqa: E402


@dataclass(frozen=True)
class Curve:
    folder: str
    system: str
    learning_rate: float
    margin_factor: float
    seed_index: int  # position among the grid's selection seeds
    budget_steps: int | None
    points: tuple[tuple[int, float], ...]  # (step, dev AP)

    @property
    def label(self) -> str:
        factor = "" if self.margin_factor == 1.0 else f" x{self.margin_factor:g}"
        budget = f", {self.budget_steps} steps" if self.budget_steps else ""
        return f"{self.system} lr {lr_tag(self.learning_rate)}{factor}{budget} ({Path(self.folder).name})"


def read_curves(folders: Sequence[str | Path], systems: Sequence[str] | None = None,
                learning_rates: Sequence[float] | None = None) -> list[Curve]:
    """Every recorded dev curve of ``systems`` (default: all) in each folder, earlier grids included,
    at ``learning_rates`` only where given.

    A folder without ``tuning.json`` is an error naming it; a cell without a curve (a record made
    before curves were kept) is skipped, as it has nothing to draw.
    """
    curves: list[Curve] = []
    for folder in folders:
        tuning_file = Path(folder) / "tuning.json"
        if not tuning_file.is_file():
            raise FileNotFoundError(f"{tuning_file}: no tuning record (not a quality.py --lr-grid folder?)")
        tuning: dict[str, Any] = json.loads(tuning_file.read_text())
        budget_file = Path(folder) / "budget.json"
        steps = json.loads(budget_file.read_text()).get("steps") if budget_file.is_file() else None
        if systems and not set(systems) & set(tuning):
            raise ValueError(f"{tuning_file} has no tuning record of {sorted(systems)}; it has {sorted(tuning)}")
        for name, info in tuning.items():
            if systems and name not in systems:
                continue
            for _, _, cell in system_grid_cells(info):
                if learning_rates and not any(math.isclose(cell["learning_rate"], lr) for lr in learning_rates):
                    continue
                for index, curve in enumerate(cell.get("dev_curve") or []):
                    if curve:
                        curves.append(Curve(str(folder), name, float(cell["learning_rate"]),
                                            float(cell.get("margin_factor", 1.0)), index, steps,
                                            tuple((int(step), float(ap)) for step, ap in curve)))
    return curves


def plot_curves(curves: Sequence[Curve], path: str | Path, title: str | None = None) -> Path:
    """One panel per system, one line per curve (first selection seed solid, others dotted), the
    kept checkpoint starred, each folder's step budget dashed."""
    if not curves:
        raise ValueError("no dev curves to plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(dict.fromkeys(c.system for c in curves))
    fig, axes = plt.subplots(1, len(systems), figsize=(7 * len(systems), 4.8), sharey=True, squeeze=False)
    for ax, system in zip(axes[0], systems, strict=True):
        mine = [c for c in curves if c.system == system]
        for curve in mine:
            steps, aps = zip(*curve.points, strict=True)
            ax.plot(steps, aps, "-" if curve.seed_index == 0 else ":", marker="o", markersize=3,
                    label=curve.label.removeprefix(f"{system} ") if curve.seed_index == 0 else None)
            best = max(range(len(aps)), key=aps.__getitem__)
            ax.plot(steps[best], aps[best], "k*", markersize=8)
        for steps in sorted({c.budget_steps for c in mine if c.budget_steps}):
            ax.axvline(steps, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(system, fontsize=9)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("dev AP")
    fig.suptitle(title or "dev AP during training (star: the kept checkpoint; dashed: a folder's step budget)",
                 fontsize=9)
    fig.tight_layout()
    out = Path(path)
    with atomic_file(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", nargs="+", required=True, help="quality.py --work folders with a tuning.json")
    parser.add_argument("--systems", nargs="+", help="tuned systems to draw (default: every one)")
    parser.add_argument("--lr", type=float, nargs="+", help="only the cells at these learning rates")
    parser.add_argument("--png", required=True, help="where to write the figure")
    parser.add_argument("--title")
    args = parser.parse_args(argv)
    try:
        curves = read_curves(args.work, args.systems, args.lr)
        out = plot_curves(curves, args.png, args.title)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    for curve in curves:
        best_step, best_ap = max(curve.points, key=lambda point: point[1])
        print(f"{curve.label} seed #{curve.seed_index}: best dev AP {best_ap:.4f} at step {best_step}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
