"""Loss registry: values against hand computations on 2-D points, tuple construction, guards, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metric_sim.losses import (
    build_loss,
    default_loss_params,
    label_masks,
    list_losses,
    manhattan_scale,
    masks_to_pairs,
    pair_indices_tuple,
)

# Five unique texts embedded at hand-picked 2-D points.
E = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0], [0.0, 2.0], [4.0, 4.0]])
# Explicit pairs: (0,2) and (3,4) duplicates; (0,1) and (2,3) not.
IDX_A = torch.tensor([0, 3, 0, 2])
IDX_B = torch.tensor([2, 4, 1, 3])
LABELS = torch.tensor([1, 1, 0, 0])
# Clusters from the duplicates: {0, 2} -> 0, {1} -> 1, {3, 4} -> 2.
TEXT_LABELS = torch.tensor([0, 1, 0, 2, 2])

SQRT5, SQRT20 = math.sqrt(5.0), math.sqrt(20.0)
L2 = {(0, 2): 1.0, (3, 4): SQRT20, (0, 1): 5.0, (2, 3): SQRT5}
L1 = {(0, 2): 1.0, (3, 4): 6.0, (0, 1): 7.0, (2, 3): 3.0}


def _loss(name, metric="euclidean", **params):
    return build_loss(name, metric, embedding_dim=2, params=params)


def _dist(i, j, p=2):
    return float(np.linalg.norm(E[i].numpy() - E[j].numpy(), ord=p))


# ----------------------------------------------------------------------------- values


def test_contrastive_euclidean_by_hand():
    result = _loss("contrastive", pos_margin=0.5, neg_margin=3.0)(E, IDX_A, IDX_B, LABELS)
    # positives: relu(1 - .5) = .5 and relu(sqrt20 - .5); negatives: relu(3 - 5) = 0, relu(3 - sqrt5).
    # PML averages each side over its non-zero terms, then adds them.
    pos = (0.5 + (SQRT20 - 0.5)) / 2
    neg = 3.0 - SQRT5
    assert result.loss.item() == pytest.approx(pos + neg, abs=1e-5)
    assert result.tuples == 4 and result.mined == 4


def test_contrastive_manhattan_uses_raw_l1_distance():
    result = _loss("contrastive", "manhattan", pos_margin=0.5, neg_margin=3.5)(E, IDX_A, IDX_B, LABELS)
    # L1: d(0,2)=1, d(3,4)=6, d(0,1)=7, d(2,3)=3 -> pos (0.5 + 5.5)/2, neg relu(3.5-3) = 0.5 (7 is past the margin)
    assert result.loss.item() == pytest.approx(3.0 + 0.5, abs=1e-5)


def test_online_contrastive_keeps_only_hard_pairs_by_hand():
    # Hard negatives: closer than the farthest positive (sqrt20) -> only d(2,3)=sqrt5, not d(0,1)=5.
    # Hard positives: farther than the closest negative (sqrt5) -> only d(3,4)=sqrt20, not d(0,2)=1.
    result = _loss("online_contrastive", pos_margin=0.5, neg_margin=3.0)(E, IDX_A, IDX_B, LABELS)
    assert result.loss.item() == pytest.approx((SQRT20 - 0.5) + (3.0 - SQRT5), abs=1e-5)
    assert result.tuples == 4 and result.mined == 2  # one pair per side survives and still counts


def test_online_contrastive_all_easy_gives_zero_but_is_not_a_data_problem():
    far = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0]])
    # Positives (0.1 apart) all closer than the closest negative (10 apart): nothing is hard.
    pairs = (torch.tensor([0, 2, 0, 1]), torch.tensor([1, 3, 2, 3]), torch.tensor([1, 1, 0, 0]))
    result = _loss("online_contrastive")(far, *pairs)
    assert result.loss.item() == 0.0
    assert result.tuples == 4 and result.mined == 0


def test_single_positive_and_negative_pair_still_give_a_loss():
    # PML's GenericPairLoss returns 0 when each index tensor has <= 1 element; we must not.
    result = _loss("contrastive", pos_margin=0.0, neg_margin=3.0)(E, torch.tensor([0, 2]), torch.tensor([2, 3]), torch.tensor([1, 0]))
    assert result.loss.item() == pytest.approx(1.0 + (3.0 - SQRT5), abs=1e-5)


def _triplets_from_clusters():
    # Anchors with a same-cluster positive and every other-cluster negative.
    out = []
    for a, p in ((0, 2), (2, 0), (3, 4), (4, 3)):
        for n in range(5):
            if TEXT_LABELS[n] != TEXT_LABELS[a]:
                out.append((a, p, n))
    return out


def test_triplet_by_hand_with_in_batch_negatives():
    margin = 2.0
    result = _loss("triplet", margin=margin)(E, IDX_A, IDX_B, LABELS, TEXT_LABELS)
    triplets = _triplets_from_clusters()
    assert len(triplets) == 12 and result.tuples == 12
    terms = [max(0.0, _dist(a, p) - _dist(a, n) + margin) for a, p, n in triplets]
    nonzero = [t for t in terms if t > 0]
    assert result.loss.item() == pytest.approx(sum(nonzero) / len(nonzero), abs=1e-5)


def _pair_masks():
    pos = np.zeros((5, 5), bool)
    for a, b in ((0, 2), (3, 4)):
        pos[a, b] = pos[b, a] = True
    neg = TEXT_LABELS.numpy()[:, None] != TEXT_LABELS.numpy()[None, :]
    return pos, neg


def test_multi_similarity_by_hand():
    alpha, beta, base = 2.0, 3.0, 2.5
    result = _loss("multi_similarity", alpha=alpha, beta=beta, base=base)(E, IDX_A, IDX_B, LABELS, TEXT_LABELS)
    pos, neg = _pair_masks()
    per_anchor = []
    for i in range(5):
        pos_terms = [math.exp(alpha * (_dist(i, j) - base)) for j in range(5) if pos[i, j]]
        neg_terms = [math.exp(beta * (base - _dist(i, j))) for j in range(5) if neg[i, j]]
        value = 0.0
        if pos_terms:
            value += math.log(1 + sum(pos_terms)) / alpha
        if neg_terms:
            value += math.log(1 + sum(neg_terms)) / beta
        per_anchor.append(value)
    assert result.loss.item() == pytest.approx(sum(per_anchor) / 5, abs=1e-5)


def test_ntxent_by_hand():
    tau = 2.0
    result = _loss("ntxent", temperature=tau)(E, IDX_A, IDX_B, LABELS, TEXT_LABELS)
    pos, neg = _pair_masks()
    terms = []
    for a in range(5):
        for p in range(5):
            if pos[a, p]:
                numerator = math.exp(-_dist(a, p) / tau)
                denominator = numerator + sum(math.exp(-_dist(a, n) / tau) for n in range(5) if neg[a, n])
                terms.append(-math.log(numerator / denominator))
    assert len(terms) == 4 and result.tuples == 4
    assert result.loss.item() == pytest.approx(sum(terms) / len(terms), abs=1e-5)


def test_supcon_by_hand():
    tau = 2.0
    result = _loss("supcon", temperature=tau)(E, IDX_A, IDX_B, LABELS, TEXT_LABELS)
    pos, neg = _pair_masks()
    terms = []
    for a in range(5):
        if not pos[a].any():
            continue
        log_denominator = math.log(sum(math.exp(-_dist(a, k) / tau) for k in range(5) if pos[a, k] or neg[a, k]))
        terms.append(-np.mean([-_dist(a, p) / tau - log_denominator for p in range(5) if pos[a, p]]))
    assert result.loss.item() == pytest.approx(sum(terms) / len(terms), abs=1e-5)


def _pair_ranking_by_hand(positive, negative, tau):
    return math.log(1.0 + sum(math.exp((p - n) / tau) for p in positive for n in negative))


@pytest.mark.parametrize("metric, distances", [("euclidean", L2), ("manhattan", L1)])
@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_pair_ranking_by_hand(metric, distances, tau):
    result = _loss("pair_ranking", metric, temperature=tau)(E, IDX_A, IDX_B, LABELS)
    # log(1 + sum over (duplicate, non-duplicate) of exp((d_dup - d_non) / tau)), raw distances.
    expected = _pair_ranking_by_hand([distances[0, 2], distances[3, 4]], [distances[0, 1], distances[2, 3]], tau)
    assert result.loss.item() == pytest.approx(expected, rel=1e-5)
    assert result.tuples == 4 and result.mined == 4  # 2 duplicates x 2 non-duplicates to order


def test_pair_ranking_is_the_same_for_either_order_of_each_pair():
    forward = _loss("pair_ranking", temperature=1.0)(E, IDX_A, IDX_B, LABELS).loss
    swapped = _loss("pair_ranking", temperature=1.0)(E, IDX_B, IDX_A, LABELS).loss
    assert forward.item() == pytest.approx(swapped.item(), rel=1e-6)


def test_pair_ranking_pulls_duplicates_in_and_pushes_non_duplicates_out():
    emb = E.clone().requires_grad_(True)
    _loss("pair_ranking", temperature=1.0)(emb, IDX_A, IDX_B, LABELS).loss.backward()
    step = emb.detach() - 0.01 * emb.grad
    d = lambda x, i, j: float(torch.linalg.norm(x[i] - x[j]))  # noqa: E731
    assert d(step, 3, 4) < d(E, 3, 4)  # the far duplicate comes closer
    assert d(step, 2, 3) > d(E, 2, 3)  # the close non-duplicate moves away


def test_pair_ranking_without_both_kinds_of_pair_is_a_zero_that_keeps_the_graph():
    emb = E.clone().requires_grad_(True)
    result = _loss("pair_ranking")(emb, IDX_A[:2], IDX_B[:2], LABELS[:2])  # duplicates only
    assert result.loss.item() == 0.0 and result.tuples == 0
    result.loss.backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb))


def test_pair_ranking_stays_finite_for_large_gaps():
    far = E * 1000.0  # gaps of thousands over a temperature of 0.05: exp would overflow
    result = _loss("pair_ranking", temperature=0.05)(far, IDX_A, IDX_B, LABELS)
    assert math.isfinite(result.loss.item())
    assert result.loss.item() == pytest.approx((far[3] - far[4]).norm().item() / 0.05 - (far[2] - far[3]).norm().item() / 0.05, rel=1e-3)


@pytest.mark.parametrize("name", list_losses())
def test_every_loss_backpropagates(name):
    emb = (E + 0.01 * torch.arange(10.0).reshape(5, 2)).requires_grad_(True)
    result = _loss(name)(emb, IDX_A, IDX_B, LABELS, TEXT_LABELS)
    result.loss.backward()
    assert torch.isfinite(emb.grad).all()


# ----------------------------------------------------------------------------- tuples


def test_pair_tuple_over_unique_texts_matches_pml_on_cat_a_b():
    """Repeated texts embedded once give the same loss as PML's cat([A, B]) recipe."""
    from pytorch_metric_learning.losses import ContrastiveLoss

    from metric_sim.distances import pml_distance

    texts_a = ["q0", "q0", "q2", "q3", "q0"]  # "q0" appears three times, "q2" on both sides
    texts_b = ["q2", "q1", "q3", "q4", "q4"]
    labels = torch.tensor([1, 0, 0, 1, 0])
    point = {"q0": E[0], "q1": E[1], "q2": E[2], "q3": E[3], "q4": E[4]}
    unique = sorted(set(texts_a) | set(texts_b))
    row = {t: i for i, t in enumerate(unique)}
    emb_unique = torch.stack([point[t] for t in unique])
    idx_a = torch.tensor([row[t] for t in texts_a])
    idx_b = torch.tensor([row[t] for t in texts_b])
    ours = _loss("contrastive", pos_margin=0.5, neg_margin=3.0)(emb_unique, idx_a, idx_b, labels).loss

    a = torch.stack([point[t] for t in texts_a])
    b = torch.stack([point[t] for t in texts_b])
    pos, neg = torch.where(labels == 1)[0], torch.where(labels == 0)[0]
    B = len(texts_a)
    reference = ContrastiveLoss(pos_margin=0.5, neg_margin=3.0, distance=pml_distance("euclidean"))(
        torch.cat([a, b]), indices_tuple=(pos, pos + B, neg, neg + B)
    )
    assert emb_unique.shape[0] == 5 < 2 * B
    assert ours.item() == pytest.approx(reference.item(), abs=1e-6)


def test_pair_indices_tuple_drops_self_pairs():
    a1, p, a2, n = pair_indices_tuple(torch.tensor([0, 1, 2]), torch.tensor([0, 2, 1]), torch.tensor([0, 1, 0]))
    assert (a1.tolist(), p.tolist(), a2.tolist(), n.tolist()) == ([1], [2], [2], [1])


def test_label_masks_keep_explicit_negatives_inside_a_cluster():
    # a~b and b~c put a, b, c in one cluster; the labelled non-duplicate (a, c) stays a negative.
    text_labels = torch.tensor([7, 7, 7, 9])
    pos, neg = label_masks(text_labels, torch.tensor([0, 1, 0]), torch.tensor([1, 2, 2]), torch.tensor([1, 1, 0]))
    assert not pos[0, 2] and not pos[2, 0] and neg[0, 2] and neg[2, 0]
    assert pos[0, 1] and pos[1, 2]
    assert neg[0, 3] and neg[3, 1]  # different clusters in a batch are negatives
    assert not (pos & neg).any() and not pos.diagonal().any() and not neg.diagonal().any()
    a1, p, a2, n = masks_to_pairs(pos, neg)
    assert len(a1) == int(pos.sum()) and len(a2) == int(neg.sum())


@pytest.mark.parametrize("miner", ["batch_hard", "triplet_margin"])
def test_triplet_miners_respect_explicit_negatives(miner):
    # One cluster {0,1,2}, but (0,2) is a labelled non-duplicate: no triplet may use 2 as 0's positive.
    emb = torch.tensor([[0.0, 0.0], [0.5, 0.0], [3.0, 0.0], [0.2, 0.2]])
    loss = _loss("triplet", miner=miner, margin=1.0)
    text_labels = torch.tensor([0, 0, 0, 1])
    idx_a, idx_b, labels = torch.tensor([0, 1, 0]), torch.tensor([1, 2, 2]), torch.tensor([1, 1, 0])
    result = loss(emb, idx_a, idx_b, labels, text_labels)
    assert result.tuples > 0 and result.loss.item() > 0
    from metric_sim.losses.tuples import restrict_to_masks

    pos, neg = label_masks(text_labels, idx_a, idx_b, labels)
    same = text_labels[:, None] == text_labels[None, :]
    a, p, n = restrict_to_masks(loss.miner(emb, text_labels), pos, neg, same)
    for i, j, k in zip(a.tolist(), p.tolist(), n.tolist(), strict=True):
        assert pos[i, j] and neg[i, k]
    assert any(i == 0 and k == 2 for i, k in zip(a.tolist(), n.tolist(), strict=True))  # the conflict is a negative


# ----------------------------------------------------------------------------- guards


def test_triplet_batches_without_a_positive_or_a_negative_have_no_tuple():
    loss = _loss("triplet")
    # Only non-duplicates: no anchor has a positive.
    result = loss(E[:4], torch.tensor([0, 2]), torch.tensor([1, 3]), torch.tensor([0, 0]), torch.tensor([0, 1, 2, 3]))
    assert result.tuples == 0 and result.loss.item() == 0.0
    # One duplicate pair and nothing else: no negative.
    result = loss(E[:2], torch.tensor([0]), torch.tensor([1]), torch.tensor([1]), torch.tensor([5, 5]))
    assert result.tuples == 0 and result.loss.item() == 0.0
    # The same pairs with an in-batch text of another cluster do give triplets.
    result = loss(E[:3], torch.tensor([0]), torch.tensor([1]), torch.tensor([1]), torch.tensor([5, 5, 6]))
    assert result.tuples == 2 and result.loss.item() > 0


def test_label_losses_require_text_labels():
    with pytest.raises(ValueError, match="text_labels"):
        _loss("ntxent")(E, IDX_A, IDX_B, LABELS)


# ----------------------------------------------------------------------------- registry


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ValueError) as info:
        build_loss("arcface", "euclidean", embedding_dim=8)
    for name in ("contrastive", "online_contrastive", "pair_ranking", "triplet", "multi_similarity", "ntxent", "supcon"):
        assert name in str(info.value)
    assert "'arcface'" in str(info.value)
    assert set(list_losses()) >= {"contrastive", "online_contrastive", "triplet", "multi_similarity", "ntxent", "supcon"}


def test_unknown_metric_lists_valid_names():
    with pytest.raises(ValueError, match="euclidean.*manhattan.*'cosine'"):
        build_loss("contrastive", "cosine", embedding_dim=8)


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['margin'\] for loss 'contrastive'; valid: \["):
        build_loss("contrastive", "euclidean", embedding_dim=8, params={"margin": 1.0})
    with pytest.raises(ValueError, match="neg_margin' must be > 0, got -1"):
        build_loss("contrastive", "euclidean", embedding_dim=8, params={"neg_margin": -1})
    with pytest.raises(ValueError, match="pos_margin must be smaller than neg_margin"):
        build_loss("contrastive", "euclidean", embedding_dim=8, params={"pos_margin": 2.0, "neg_margin": 1.0})
    with pytest.raises(ValueError, match="miner of loss 'ntxent' must be one of"):
        build_loss("ntxent", "euclidean", embedding_dim=8, params={"miner": "batch_hard"})
    with pytest.raises(TypeError, match="'margin' must be a finite number, got 'big'"):
        build_loss("triplet", "euclidean", embedding_dim=8, params={"margin": "big"})


def test_manhattan_defaults_scale_with_dimension():
    assert manhattan_scale(384) == pytest.approx(15.635, abs=1e-3)
    l2 = default_loss_params("contrastive", "euclidean", 384)
    l1 = default_loss_params("contrastive", "manhattan", 384)
    assert l1["neg_margin"] == pytest.approx(l2["neg_margin"] * manhattan_scale(384))
    ms2, ms1 = default_loss_params("multi_similarity", "l2", 384), default_loss_params("multi_similarity", "l1", 384)
    assert ms1["beta"] == pytest.approx(ms2["beta"] / manhattan_scale(384))  # weights on distance scale inversely
    assert ms1["base"] == pytest.approx(ms2["base"] * manhattan_scale(384))


def test_manhattan_scale_matches_measured_l1_l2_ratio_of_random_vectors():
    rng = np.random.default_rng(0)
    diff = rng.standard_normal((2000, 384))
    ratio = np.median(np.abs(diff).sum(1) / np.linalg.norm(diff, axis=1))
    assert ratio == pytest.approx(manhattan_scale(384), rel=0.01)


def test_the_builder_runs_the_registry_check_so_nothing_bypasses_it():
    from metric_sim.losses import MetricLoss

    with pytest.raises(ValueError, match="'margin' must be a finite number > 0, got inf"):
        build_loss("triplet", "euclidean", embedding_dim=8, params={"margin": math.inf})
    with pytest.raises(TypeError, match="'neg_margin' must be a finite number, got True"):
        build_loss("contrastive", "euclidean", embedding_dim=8, params={"neg_margin": True})
    with pytest.raises(ValueError, match="'temperature' must be > 0, got 0"):
        MetricLoss("supcon", "euclidean", {"temperature": 0}, embedding_dim=8)
    # A Manhattan default neg_margin scales with the size: 0.8 * sqrt(2 * 384 / pi) = 12.5 here, so
    # a config (which does not know the size) lets pos_margin 13 pass and the builder refuses it.
    build_loss("contrastive", "manhattan", embedding_dim=384, params={"pos_margin": 12.0})
    with pytest.raises(ValueError, match=r"pos_margin=13.0 and neg_margin=12.5082 \(the manhattan default for 384 dims\)"):
        build_loss("contrastive", "manhattan", embedding_dim=384, params={"pos_margin": 13.0})


def test_a_config_changed_after_it_was_built_is_still_checked_by_the_builder():
    from metric_sim.training import TrainConfig

    config = TrainConfig(train_file="/nonexistent/pairs.tsv", loss="contrastive")
    config.loss_params["neg_margin"] = -1.0  # mutation skips __post_init__
    with pytest.raises(ValueError, match="'neg_margin' must be > 0, got -1.0"):
        build_loss(config.loss, config.metric, embedding_dim=8, params=config.loss_params)


@pytest.mark.parametrize("metric", ["euclidean", "manhattan"])
@pytest.mark.parametrize("name", list_losses())
def test_every_loss_builds_with_its_defaults_for_every_metric(name, metric):
    for dim in (2, 384):
        loss = build_loss(name, metric, embedding_dim=dim, params=default_loss_params(name, metric, dim))
        assert loss.params == pytest.approx(default_loss_params(name, metric, dim))
