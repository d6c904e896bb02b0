"""How often is a negative mined on QQP an unlabelled duplicate?

Mined hard negatives lowered dev AP on QQP at every learning rate (RESULTS.md, "Hard negatives at
the recipe's budget"). The suspected reason is false negatives: Quora labels only the pairs it
was asked about, so the nearest unlabelled neighbour of a question may well be its duplicate. This
script measures that suspicion two ways, neither of which is ground truth:

* **a fine-tuned judge**: every (anchor, candidate) pair the starting model ranks 1..``--ranks``
  among an anchor's non-excluded neighbours (the candidates ``mine_hard_negatives`` chooses from)
  is scored by a calibrated model fine-tuned on the QQP train pairs (``--judge``). The share it
  calls similar (``p > 0.5``) per rank is compared with its share on the *labelled* dev
  non-duplicates, which are hard too (Quora picked them because they look alike);
* **a sample to read**: ``--sample`` random negatives of the set that the ``ms_contrastive_l2_hn``
  row trains on (its exact mining options), with both models' figures, for a person to judge.

    PYTHONPATH=$PWD python benchmarks/mined_negative_audit.py \
        --judge runs/bench/qqp_mt/runs/ms_contrastive_l2_ntxent@lr0.0001@s0 \
        --json benchmarks/results_mined_negative_audit.json --markdown benchmarks/results_mined_negative_audit.md \
        --png benchmarks/mined_negative_audit.png
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, markdown_table, write_outputs  # noqa: E402
from quality_data import RECIPES, TASKS  # noqa: E402
from quality_systems import HARD_NEGATIVES  # noqa: E402

from metric_sim import SimilarityModel, TrainConfig  # noqa: E402
from metric_sim.data import load_preset  # noqa: E402
from metric_sim.mining import mine_hard_negatives  # noqa: E402
from metric_sim.training.config import check_hard_negatives  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--judge", required=True, help="a calibrated model folder or training run fine-tuned on QQP train")
    parser.add_argument("--ranks", type=int, default=20, help="candidate ranks per anchor to score (default 20)")
    parser.add_argument("--sample", type=int, default=40, help="random mined negatives to print for reading")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    parser.add_argument("--png")
    return parser


def judge_probabilities(judge: SimilarityModel, texts_a: list[str], texts_b: list[str]) -> np.ndarray:
    """The judge's calibrated p(similar) of each pair."""
    return judge.predict_proba(texts_a, texts_b, batch_size=128)


def plot(per_rank: list[dict[str, Any]], dev_negatives: float, used: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ranks = [row["rank"] for row in per_rank]
    ax.plot(ranks, [row["called_similar"] for row in per_rank], marker="o", label="candidates at this rank")
    ax.axhline(dev_negatives, color="tab:red", linestyle="--", label="labelled dev non-duplicates")
    ax.axhline(used, color="tab:green", linestyle=":", label="the negatives the hn row trains on")
    ax.set_xlabel("rank among the anchor's non-excluded neighbours (starting model, raw Euclidean)")
    ax.set_ylabel("share the fine-tuned judge calls similar (p > 0.5)")
    ax.set_ylim(0, max(0.05, max(row["called_similar"] for row in per_rank) * 1.15))
    ax.set_title("QQP: are mined negatives unlabelled duplicates?")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    recipe = TrainConfig.from_yaml(RECIPES / TASKS["qqp"])
    train, dev = load_preset("qqp", split="train"), load_preset("qqp", split=recipe.dev_split)
    starting = SimilarityModel.from_pretrained("default", metric=recipe.metric, max_length=recipe.max_length)
    judge = SimilarityModel.from_pretrained(args.judge)
    started = time.perf_counter()
    candidates = mine_hard_negatives(starting, train, num_negatives=args.ranks, range_max=args.ranks,
                                     anchors=HARD_NEGATIVES["anchors"], seed=args.seed, show_progress=True)
    # The block exactly as training turns it into mining options (training/data.py), seed included.
    options = check_hard_negatives(HARD_NEGATIVES, recipe.metric, recipe.seed)
    used = mine_hard_negatives(starting, train, batch_size=recipe.eval_batch_size, **options, show_progress=True)
    mining_s = time.perf_counter() - started

    p_candidates = judge_probabilities(judge, candidates.anchor_texts, candidates.negative_texts)
    p_used = judge_probabilities(judge, used.anchor_texts, used.negative_texts)
    dev_labels = np.asarray(dev.labels)
    p_dev = judge_probabilities(judge, list(dev.texts_a), list(dev.texts_b))
    dev_negatives = float(np.mean(p_dev[dev_labels == 0] > 0.5))
    dev_duplicates = float(np.mean(p_dev[dev_labels == 1] > 0.5))
    per_rank = []
    for rank in range(1, args.ranks + 1):
        at = candidates.ranks == rank
        per_rank.append({"rank": rank, "pairs": int(at.sum()), "called_similar": float(np.mean(p_candidates[at] > 0.5)),
                         "mean_p": float(np.mean(p_candidates[at]))})
    used_share = float(np.mean(p_used > 0.5))

    rng = np.random.default_rng(args.seed)
    picked = sorted(rng.choice(len(used), size=min(args.sample, len(used)), replace=False).tolist())
    sample = [{"anchor": used.anchor_texts[i], "negative": used.negative_texts[i], "rank": int(used.ranks[i]),
               "distance_starting": round(float(used.distances[i]), 4), "p_judge": round(float(p_used[i]), 3)}
              for i in picked]

    summary_rows = [
        ["labelled dev duplicates (the judge's recall at p > 0.5)", int((dev_labels == 1).sum()), f"{dev_duplicates:.3f}"],
        ["labelled dev non-duplicates (its false-positive rate)", int((dev_labels == 0).sum()), f"{dev_negatives:.3f}"],
        [f"negatives the hn row trains on ({options})", len(used), f"{used_share:.3f}"],
        *[[f"candidates at rank {row['rank']}", row["pairs"], f"{row['called_similar']:.3f}"]
          for row in per_rank if row["rank"] in (1, 2, 3, 5, 10, 20)],
    ]
    text = markdown_table(["pairs", "n", "share the judge calls similar"], summary_rows)
    text += "\n\n" + markdown_table(["p judge", "rank", "anchor", "mined negative"],
                                    [[s["p_judge"], s["rank"], s["anchor"].replace("|", "/"),
                                      s["negative"].replace("|", "/")] for s in sample])
    print(text)
    payload = {"judge": str(args.judge), "ranks": args.ranks, "mining_options_used": options,
               "mining_s_both": round(mining_s, 1), "anchors": int(candidates.counts.get("anchors", 0)),
               "counts_used": used.counts, "dev": {"duplicates_called_similar": dev_duplicates,
                                                   "non_duplicates_called_similar": dev_negatives},
               "used_called_similar": used_share, "per_rank": per_rank, "sample": sample,
               "environment": environment()}
    write_outputs(args.json, payload, args.markdown, text)
    if args.png:
        plot(per_rank, dev_negatives, used_share, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
