"""quality.py's naive baselines on frozen base embeddings: MLP pair classifiers and TF-IDF cosine.

(a) MLP on concat(f(x), f(y)), (b) (a) averaged over both orders, (c) MLP on [|x-y|, x*y],
(d) MLP on |x-y|, one row per seed, each logit Platt-calibrated on dev at scoring time; and a
TF-IDF cosine distance fitted on the train texts.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_data import Context  # noqa: E402

from metric_sim import Encoder, PairDataset  # noqa: E402


def base_embeddings(ctx: Context) -> tuple[dict[str, int], np.ndarray, float]:
    """Frozen base-encoder (default: all-MiniLM-L6-v2) embeddings of every text of train/dev/test (cached)."""
    path = ctx.store.work / "base_embeddings.npz"
    texts = sorted({t for part in (ctx.task.train, ctx.task.dev, ctx.task.test) for t in (*part.texts_a, *part.texts_b)})
    if path.is_file():
        with np.load(path) as f:
            if f["texts"].tolist() == texts:
                return {t: i for i, t in enumerate(texts)}, f["vectors"], float(f["seconds"])
    encoder = Encoder.from_pretrained(ctx.task.config.model, max_length=ctx.task.config.max_length)
    started = time.perf_counter()
    vectors = encoder.encode(texts, batch_size=64, show_progress=True)
    seconds = time.perf_counter() - started
    tmp = path.with_name(".base_embeddings.tmp.npz")
    np.savez(tmp, texts=np.array(texts), vectors=vectors, seconds=seconds)
    os.replace(tmp, path)
    return {t: i for i, t in enumerate(texts)}, vectors, seconds


def pair_features(kind: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Head inputs: ``concat`` [x, y] (order-dependent), ``diff_prod`` [|x-y|, x*y], ``diff`` |x-y|."""
    if kind == "concat":
        return np.concatenate([x, y], axis=1)
    if kind == "diff_prod":
        return np.concatenate([np.abs(x - y), x * y], axis=1)
    if kind == "diff":
        return np.abs(x - y)
    raise ValueError(f"unknown feature kind {kind!r}; expected concat, diff_prod or diff")


def mlp_logits(clf: Any, features: np.ndarray) -> np.ndarray:
    """The pre-sigmoid output of a fitted ``MLPClassifier`` (ReLU hidden layers, from its public
    ``coefs_``/``intercepts_``): unlike ``predict_proba`` it does not saturate to ties at 1.0."""
    h = features
    for weight, bias in zip(clf.coefs_[:-1], clf.intercepts_[:-1], strict=True):
        h = np.maximum(h @ weight + bias, 0.0)
    return (h @ clf.coefs_[-1] + clf.intercepts_[-1]).ravel()


def fit_mlp(train_x: np.ndarray, train_y: np.ndarray, dev_x: np.ndarray, dev_y: np.ndarray, *, seed: int,
            max_epochs: int = 40, patience: int = 5, hidden: int = 256) -> tuple[Any, dict[str, Any]]:
    """sklearn MLPClassifier (Adam, minibatches of 256), one epoch per ``partial_fit``; the epoch
    with the best dev average precision is kept (early stopping with ``patience``)."""
    from sklearn.metrics import average_precision_score
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(hidden,), alpha=1e-4, batch_size=256, learning_rate_init=1e-3,
                        random_state=seed, shuffle=True)
    best, best_ap, best_epoch, history = None, -1.0, 0, []
    for epoch in range(1, max_epochs + 1):
        clf.partial_fit(train_x, train_y, classes=np.array([0, 1]))
        ap = float(average_precision_score(dev_y, mlp_logits(clf, dev_x)))
        history.append(round(ap, 4))
        if ap > best_ap:
            best, best_ap, best_epoch = copy.deepcopy(clf), ap, epoch
        elif epoch - best_epoch >= patience:
            break
    assert best is not None
    return best, {"best_epoch": best_epoch, "epochs_run": len(history), "dev_ap": round(best_ap, 4), "dev_ap_history": history}


def _rows_baselines(ctx: Context) -> None:
    row_of, vectors, embed_s = base_embeddings(ctx)

    def side(part: PairDataset) -> tuple[np.ndarray, np.ndarray]:
        return (vectors[[row_of[t] for t in part.texts_a]], vectors[[row_of[t] for t in part.texts_b]])

    (tr_a, tr_b), (dv_a, dv_b), (te_a, te_b) = side(ctx.task.train), side(ctx.task.dev), side(ctx.task.test)
    common = {"kind": "logit", "embed_s": round(embed_s, 1), "calibration": "Platt: 1-feature logistic on the dev logit"}
    for seed in ctx.seeds:
        for kind, label in (("concat", "(a) MLP(concat(f(x), f(y)))"), ("diff_prod", "(c) MLP(|f(x)-f(y)|, f(x)*f(y))"),
                            ("diff", "(d) MLP(|f(x)-f(y)|)")):
            row = f"mlp_{kind}@s{seed}"
            if ctx.store.has(row) and (kind != "concat" or ctx.store.has(f"mlp_concat_avg@s{seed}")):
                continue
            started = time.perf_counter()
            clf, info = fit_mlp(pair_features(kind, tr_a, tr_b), ctx.task.train.labels, pair_features(kind, dv_a, dv_b),
                                ctx.task.dev.labels, seed=seed)
            fit_s = round(time.perf_counter() - started, 1)

            def logits(x: np.ndarray, y: np.ndarray, kind: str = kind, clf: Any = clf) -> np.ndarray:
                return mlp_logits(clf, pair_features(kind, x, y))

            arrays = {"dev": logits(dv_a, dv_b), "test": logits(te_a, te_b), "test_rev": logits(te_b, te_a)}
            meta = {**common, **info, "seed": seed, "train_s": fit_s, "wall_s": round(fit_s + embed_s, 1), "label": label}
            ctx.store.save(row, arrays, meta)
            if kind == "concat":  # (b): the same network, logits averaged over both orders
                avg = {"dev": (logits(dv_a, dv_b) + logits(dv_b, dv_a)) / 2,
                       "test": (arrays["test"] + arrays["test_rev"]) / 2,
                       "test_rev": (arrays["test_rev"] + arrays["test"]) / 2}
                ctx.store.save(f"mlp_concat_avg@s{seed}", avg,
                               {**meta, "label": "(b) (a) averaged over both orders (mean logit)"})


def tfidf_distances(train_texts: Sequence[str], pairs: Sequence[tuple[Sequence[str], Sequence[str]]]) -> list[np.ndarray]:
    """TF-IDF (sklearn defaults, fitted on ``train_texts``), rows L2-normalised; for each
    ``(texts_a, texts_b)`` the Euclidean distance ``sqrt(2 - 2 cos)``, a monotone map of
    ``1 - cos`` (its square is ``2 (1 - cos)``). Texts with no known word get distance sqrt(2)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer().fit(train_texts)
    out = []
    for texts_a, texts_b in pairs:
        va, vb = vectorizer.transform(texts_a), vectorizer.transform(texts_b)
        cos = np.asarray(va.multiply(vb).sum(axis=1)).ravel()  # elementwise product: the same in either order
        out.append(np.sqrt(np.clip(2.0 - 2.0 * cos, 0.0, None)))
    return out


def _rows_tfidf(ctx: Context) -> None:
    if ctx.store.has("tfidf"):
        return
    t = ctx.task
    started = time.perf_counter()
    train_texts = sorted(set(t.train.texts_a) | set(t.train.texts_b))
    dev, test, test_rev = tfidf_distances(train_texts, [(t.dev.texts_a, t.dev.texts_b), (t.test.texts_a, t.test.texts_b),
                                                         (t.test.texts_b, t.test.texts_a)])
    ctx.store.save("tfidf", {"dev": dev, "test": test, "test_rev": test_rev},
                   {"kind": "distance", "metric": "euclidean", "label": "TF-IDF cosine (fitted on train texts)",
                    "train_s": round(time.perf_counter() - started, 1)})
