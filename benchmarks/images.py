"""Image and product benchmarks: ORL faces, Omniglot one-shot, Grocery photo-to-catalogue, speed.

Every system is scored on identities (people, characters) it never saw in training, or on
held-out photos of a known catalogue (Grocery), with the same data for every system:

* ``orl``      verification over 5 folds of unseen people (8 test people each; the other 32
               split 26 train / 6 dev): AP, ROC-AUC, acc/F1 at the calibrated tau (fitted on the
               fold's dev pairs), ECE. Systems: EfficientNet-Lite0 zero-shot; the same with a
               trained head on frozen features; the small CNN from scratch; ``face_recognition``
               (dlib's 128-d embedding, fixed 0.6 threshold, plus our calibration on its distances)
               when it is installed.
* ``omniglot`` train on ``small1``, N-way one-shot on ``small2`` (Lake's protocol, 400 tasks,
               within-alphabet, Wilson 95 % interval): the small CNN, EfficientNet-Lite0 zero-shot,
               and raw pixel distance.
* ``grocery``  photo -> catalogue R@1/R@5 over val photos and 81 catalogue entries, for image-only,
               title-only and title+image entries, zero-shot and with a trained fusion head on
               frozen parts; against logistic regression on the same frozen image features.
* ``speed``    images/s of our encode against plain timm inference of the same network, same
               preprocessing, same run; training images/s frozen (cached features) and unfrozen.

    PYTHONPATH=$PWD python benchmarks/images.py orl omniglot grocery speed --work runs/bench_images \\
        --json benchmarks/results_images.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, mean_std, write_json  # noqa: E402

from metric_sim.calibration import Calibrator  # noqa: E402
from metric_sim.distances import paired_distances_numpy  # noqa: E402
from metric_sim.metrics import expected_calibration_error, pair_metrics  # noqa: E402

logger = logging.getLogger("images")
SEEDS = (0,)


def _vectors(encoder: Any, items: list[str], batch_size: int = 32) -> dict[str, np.ndarray]:
    unique = list(dict.fromkeys(items))
    return dict(zip(unique, encoder.encode(unique, batch_size=batch_size, show_progress=False), strict=True))


def _pair_distances(pairs: Any, vec: dict[str, np.ndarray], metric: str) -> np.ndarray:
    a = np.stack([vec[t] for t in pairs.texts_a])
    b = np.stack([vec[t] for t in pairs.texts_b])
    return paired_distances_numpy(a, b, metric)


def verification(vec: dict[str, np.ndarray], dev_pairs: Any, test_pairs: Any, metric: str,
                 fixed_threshold: float | None = None) -> dict[str, Any]:
    """Calibrate on dev pairs, score test pairs (AP, AUC, acc/F1 at tau, ECE); a fixed threshold too if given."""
    calibrator = Calibrator.fit(_pair_distances(dev_pairs, vec, metric), dev_pairs.labels, metric)
    d = _pair_distances(test_pairs, vec, metric)
    y = test_pairs.labels
    out = pair_metrics(d, y, calibrator)
    out["ece"] = expected_calibration_error(y, calibrator.predict_proba(d))
    if fixed_threshold is not None:
        out["accuracy_fixed_threshold"] = float(((d <= fixed_threshold).astype(int) == y).mean())
    return {k: out[k] for k in ("average_precision", "roc_auc", "accuracy", "f1", "threshold", "ece", "pairs",
                                "positives", "accuracy_fixed_threshold") if k in out}


def _train(config_kwargs: dict[str, Any], run_dir: Path, encoder: Any, train_pairs: Any, dev_pairs: Any) -> Any:
    from metric_sim.training import TrainConfig, train

    config = TrainConfig(**config_kwargs)
    result = train(config, run_dir, encoder=encoder, train_data=train_pairs, dev_data=dev_pairs, show_progress=False)
    return result


def _summary(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for key in keys:
        mean, sd = mean_std([r[key] for r in rows if key in r])
        out[key] = {"mean": mean, "sd": sd}
    return out


def _face_recognition_vectors(items: list[str]) -> dict[str, np.ndarray] | None:
    try:
        import face_recognition
    except Exception as exc:  # noqa: BLE001 - any failure means the peer is not available here
        logger.warning("face_recognition not available: %s", exc)
        return None
    from metric_sim.images import open_image

    out = {}
    for item in dict.fromkeys(items):
        image = np.asarray(open_image(item, mode="RGB"))
        found = face_recognition.face_locations(image)
        # ORL photos are tight face crops: where the detector finds no face, the whole photo is the face box.
        box = found[:1] or [(0, image.shape[1], image.shape[0], 0)]
        out[item] = np.asarray(face_recognition.face_encodings(image, known_face_locations=box)[0], np.float32)
    return out


# ORL faces -----------------------------------------------------------------------------------------------
ORL_SMALL_CNN = {"model": "small-cnn", "encoder_options": {
    "preprocess": {"size": [56, 46], "resize": "squash", "interpolation": "bilinear", "mean": 0.5, "std": 0.5,
                   "mode": "L"},
    "augment": {"hflip": True, "rotation": 8, "random_resized_crop": [0.8, 1.0], "color_jitter": 0.2}}}


def bench_orl(work: Path, folds: int, steps: int) -> dict[str, Any]:
    from metric_sim.data.image_presets import orl_items
    from metric_sim.encoders.image import image_encoder_from_name

    faces = orl_items()
    zero = image_encoder_from_name("efficientnet-lite0")
    started = time.perf_counter()
    zero_vec = _vectors(zero, faces.items)
    encode_seconds = time.perf_counter() - started
    dlib_vec = _face_recognition_vectors(faces.items)
    rows: dict[str, list[dict[str, Any]]] = {"effnet_zero_shot": [], "effnet_frozen_head": [], "small_cnn": [],
                                              "face_recognition": []}
    for k, fold in enumerate(faces.identity_folds(folds, seed=0)):
        parts = fold["train"].split_by_identity({"train": 26 / 32, "dev": 6 / 32}, seed=k)
        train_pairs = parts["train"].to_pairs(seed=k)
        dev_pairs = parts["dev"].to_pairs(seed=k)
        test_pairs = fold["test"].to_pairs(seed=k)
        rows["effnet_zero_shot"].append(verification(zero_vec, dev_pairs, test_pairs, "euclidean"))
        if dlib_vec is not None:
            rows["face_recognition"].append(verification(dlib_vec, dev_pairs, test_pairs, "euclidean",
                                                         fixed_threshold=0.6))
        common = {"preset": "orl", "metric": "euclidean", "batch_size": 32, "max_steps": steps,
                  "eval_steps": max(10, steps // 4), "logging_steps": 10, "warmup_ratio": 0.1, "seed": k,
                  "loss": "contrastive", "sampler": "cluster", "samples_per_cluster": 4, "normalize": True,
                  "loss_params": {"pos_margin": 0.0, "neg_margin": 1.0}, "save_total_limit": 1}
        head = _train({**common, "model": "efficientnet-lite0", "freeze_encoder": True, "projection_dim": 128,
                       "learning_rate": 1e-3}, work / f"orl_fold{k}_head", image_encoder_from_name("efficientnet-lite0"),
                      train_pairs, dev_pairs)
        rows["effnet_frozen_head"].append(verification(_vectors(head.model.encoder, faces.items), dev_pairs,
                                                       test_pairs, "euclidean"))
        cnn = _train({**common, **ORL_SMALL_CNN, "learning_rate": 3e-3, "weight_decay": 1e-4},
                     work / f"orl_fold{k}_cnn", None, train_pairs, dev_pairs)
        rows["small_cnn"].append(verification(_vectors(cnn.model.encoder, faces.items), dev_pairs, test_pairs,
                                              "euclidean"))
        logger.info("orl fold %d: %s", k, {name: round(r[-1]["average_precision"], 4) for name, r in rows.items() if r})
    keys = ("average_precision", "roc_auc", "accuracy", "f1", "ece", "accuracy_fixed_threshold")
    return {"folds": folds, "steps": steps, "encode_seconds_400": round(encode_seconds, 1),
            "systems": {name: {"summary": _summary(r, keys), "folds": r} for name, r in rows.items() if r}}


# Omniglot one-shot ---------------------------------------------------------------------------------------
OMNIGLOT_CNN = {"model": "small-cnn", "encoder_options": {
    "preprocess": {"size": 32, "resize": "squash", "interpolation": "bilinear", "mean": 0.5, "std": 0.5, "mode": "L"},
    "augment": {"rotation": 10, "random_resized_crop": [0.85, 1.0], "fill": 255}}}


def _one_shot(vectors: np.ndarray, items: Any, metric: str) -> dict[str, Any]:
    from metric_sim.evaluation.oneshot import one_shot_accuracies

    return one_shot_accuracies(vectors, items.labels, n_ways=(5, 20), metric=metric, n_tasks=400, seed=0,
                               groups=items.coarse)


def bench_omniglot(work: Path, steps: int) -> dict[str, Any]:
    from metric_sim.data.image_presets import omniglot_items
    from metric_sim.encoders.image import image_encoder_from_name
    from metric_sim.images import open_image

    small1, small2 = omniglot_items("small1"), omniglot_items("small2")
    out: dict[str, Any] = {"train_characters": len(small1.identities()), "test_characters": len(small2.identities())}
    pixels = np.stack([np.asarray(open_image(x, mode="L").resize((32, 32)), np.float32).ravel() / 255.0
                       for x in small2.items])
    out["pixels_32x32"] = _one_shot(pixels, small2, "euclidean")
    parts = small1.split_by_identity({"train": 0.85, "dev": 0.15}, seed=0)
    train_pairs = parts["train"].to_pairs(seed=0, impostors_per_genuine=1.0)
    dev_pairs = parts["dev"].to_pairs(seed=0, max_genuine_per_identity=40)
    for seed in SEEDS:
        config = {"preset": "omniglot", **OMNIGLOT_CNN, "metric": "euclidean", "batch_size": 64, "max_steps": steps,
                  "eval_steps": max(20, steps // 5), "logging_steps": 20, "warmup_ratio": 0.05, "seed": seed,
                  "loss": "multi_similarity", "sampler": "cluster", "samples_per_cluster": 4, "normalize": True,
                  "learning_rate": 3e-3, "weight_decay": 1e-4, "max_dev_pairs": 4000, "save_total_limit": 1}
        started = time.perf_counter()
        result = _train(config, work / f"omniglot_cnn_seed{seed}", None, train_pairs, dev_pairs)
        seconds = time.perf_counter() - started
        vectors = result.model.encoder.encode(small2.items, batch_size=256)
        out[f"small_cnn_seed{seed}"] = {**_one_shot(vectors, small2, "euclidean"), "train_seconds": round(seconds, 1)}
    zero = image_encoder_from_name("efficientnet-lite0", preprocess={"size": 112, "resize": "squash"})
    out["effnet_zero_shot_112px"] = _one_shot(zero.encode(small2.items, batch_size=64), small2, "euclidean")
    return out


# Grocery photo -> catalogue ------------------------------------------------------------------------------
def _records(catalogue: Any, parts: str) -> list[dict[str, Any]]:
    out = []
    for text in catalogue.items:
        record = json.loads(text)
        keep = {"title": ("title",), "image": ("image",), "both": ("title", "image")}[parts]
        out.append({k: record[k] for k in keep})
    return out


def _retrieval_rows(encoder: Any, photos: Any, catalogue: Any, metric: str) -> dict[str, Any]:
    """R@1/R@5/MRR of val photos (image-only records) against image-only, title-only and full entries."""
    from metric_sim.evaluation.catalogue import catalogue_retrieval

    queries = encoder.encode([{"image": x} for x in photos.items], batch_size=32)  # once for the three galleries
    out = {}
    for parts in ("image", "title", "both"):
        gallery = encoder.encode(_records(catalogue, parts), batch_size=32)
        result = catalogue_retrieval(queries, photos.labels, gallery, catalogue.labels, metric=metric, ks=(1, 5))
        out[parts] = {"R@1": result["recall_at_1"], "R@5": result["recall_at_5"], "mrr": result["mrr"],
                      "queries": result["queries"]}
    return out


def bench_grocery(work: Path, steps: int) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    from metric_sim.data.image_presets import catalogue_pairs, grocery_catalogue, grocery_photos
    from metric_sim.encoders.multimodal import product_encoder_from_names

    train_photos, val_photos = grocery_photos("train"), grocery_photos("val")
    catalogue = grocery_catalogue()
    zero = product_encoder_from_names()
    out: dict[str, Any] = {"val_photos": len(val_photos), "catalogue": len(catalogue)}
    out["zero_shot"] = _retrieval_rows(zero, val_photos, catalogue, "euclidean")
    # The closed-set peer: a softmax classifier (logistic regression) on the same frozen image features.
    image_part = zero.image
    x_train = image_part.encode(train_photos.items, batch_size=32)
    x_val = image_part.encode(val_photos.items, batch_size=32)
    classifier = LogisticRegression(max_iter=2000, C=1.0).fit(x_train, train_photos.labels)
    proba = classifier.predict_proba(x_val)
    order = np.argsort(-proba, axis=1)
    classes = np.asarray(classifier.classes_)
    truth = np.asarray(val_photos.labels)
    out["logistic_regression_frozen_features"] = {
        "top1": float((classes[order[:, 0]] == truth).mean()),
        "top5": float(np.mean([t in classes[row[:5]] for t, row in zip(truth, order, strict=True)])),
    }
    parts = train_photos.split_within_identities({"train": 0.85, "dev": 0.15}, seed=0)
    train_pairs = catalogue_pairs(parts["train"], catalogue, seed=0)
    dev_pairs = catalogue_pairs(parts["dev"], catalogue, seed=1)
    config = _fusion_head_config(steps)
    result = _train(config, work / "grocery_fusion", product_encoder_from_names(), train_pairs, dev_pairs)
    out["fusion_head"] = _retrieval_rows(result.model.encoder, val_photos, catalogue, "euclidean")
    return out


def _fusion_head_config(steps: int) -> dict[str, Any]:
    """The fusion head's training settings, the same for plain and modality-dropout catalogue pairs."""
    return {"preset": "grocery", "model": "multimodal", "metric": "euclidean", "freeze_encoder": True,
            "projection_dim": 256, "normalize": True, "batch_size": 64, "max_steps": steps,
            "eval_steps": max(20, steps // 5), "logging_steps": 20, "warmup_ratio": 0.05, "seed": 0,
            "loss": "contrastive", "loss_params": {"pos_margin": 0.0, "neg_margin": 1.0}, "learning_rate": 1e-3,
            "save_total_limit": 1}


def _catalogue_forms(catalogue: Any) -> Any:
    """The catalogue three times: full records, image only and title only (modality dropout for training)."""
    from metric_sim.data.collections import LabelledItems
    from metric_sim.images import describe_record, record_id

    items, labels, coarse, ids = [], [], [], []
    for parts in ("both", "image", "title"):
        for record, label, group in zip(_records(catalogue, parts), catalogue.labels, catalogue.coarse, strict=True):
            items.append(describe_record(record))
            ids.append(record_id(record))
            labels.append(label)
            coarse.append(group)
    return LabelledItems(items, labels, coarse, ids, f"{catalogue.source} (3 forms)")


def bench_grocery_dropout(work: Path, steps: int) -> dict[str, Any]:
    """The fusion head trained with catalogue entries shown in all three forms (title+image, image, title)."""
    from metric_sim.data.image_presets import catalogue_pairs, grocery_catalogue, grocery_photos
    from metric_sim.encoders.multimodal import product_encoder_from_names

    train_photos, val_photos = grocery_photos("train"), grocery_photos("val")
    catalogue = grocery_catalogue()
    forms = _catalogue_forms(catalogue)
    parts = train_photos.split_within_identities({"train": 0.85, "dev": 0.15}, seed=0)
    train_pairs = catalogue_pairs(parts["train"], forms, seed=0)
    dev_pairs = catalogue_pairs(parts["dev"], catalogue, seed=1)
    config = _fusion_head_config(steps)
    result = _train(config, work / "grocery_fusion_dropout", product_encoder_from_names(), train_pairs, dev_pairs)
    return {"train_pairs": len(train_pairs), "steps": steps,
            "fusion_head_modality_dropout": _retrieval_rows(result.model.encoder, val_photos, catalogue, "euclidean")}


# Speed ---------------------------------------------------------------------------------------------------
def bench_speed(rounds: int = 3, n_images: int = 128) -> dict[str, Any]:
    import timm
    import timm.data
    import torch

    from metric_sim.data.image_presets import grocery_photos
    from metric_sim.encoders.image import image_encoder_from_name

    items = grocery_photos("val").items[:n_images]
    ours = image_encoder_from_name("efficientnet-lite0")
    plain = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    plain.load_state_dict(ours.backbone.state_dict())
    plain.eval()
    data_config = timm.data.resolve_data_config({"input_size": (3, 224, 224), "mean": (0.5,) * 3, "std": (0.5,) * 3,
                                                 "crop_pct": 0.875, "interpolation": "bicubic"})
    transform = timm.data.create_transform(**data_config)
    from PIL import Image

    def run_plain() -> None:
        with torch.inference_mode():
            for start in range(0, len(items), 32):
                batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in items[start:start + 32]])
                plain(batch)

    def run_ours() -> None:
        ours.encode(items, batch_size=32)

    timings: dict[str, list[float]] = {"plain_timm": [], "metric_sim": []}
    for _ in range(rounds):  # interleaved, so drift hits both
        for name, fn in (("plain_timm", run_plain), ("metric_sim", run_ours)):
            started = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - started)
    median = {name: float(np.median(t)) for name, t in timings.items()}
    out = {"images": len(items), "rounds": rounds, "images_per_second": {n: len(items) / s for n, s in median.items()},
           "ratio_ours_over_plain": median["plain_timm"] / median["metric_sim"]}
    # Training throughput of one optimiser step on 32 images (forward, backward, AdamW), unfrozen backbone,
    # against the frozen mode's step on cached 1280-d features (the head alone).
    batch = ours.collate(items[:32])
    optimizer = torch.optim.AdamW(ours.parameters(), lr=1e-5)
    ours.train()
    step_times = []
    for _ in range(3):
        started = time.perf_counter()
        ours(**batch).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        step_times.append(time.perf_counter() - started)
    ours.eval()
    head = torch.nn.Linear(1280, 128)
    features = torch.randn(32, 1280)
    head_optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    started = time.perf_counter()
    for _ in range(200):
        head(features).pow(2).mean().backward()
        head_optimizer.step()
        head_optimizer.zero_grad()
    head_step = (time.perf_counter() - started) / 200
    out["training_images_per_second"] = {"unfrozen_effnet_224px": 32 / float(np.median(step_times)),
                                         "frozen_head_on_cached_features": 32 / head_step}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="+", choices=["orl", "omniglot", "grocery", "grocery_dropout", "speed"])
    parser.add_argument("--work", default="runs/bench_images")
    parser.add_argument("--json", default="benchmarks/results_images.json")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--orl-steps", type=int, default=150)
    parser.add_argument("--omniglot-steps", type=int, default=1500)
    parser.add_argument("--grocery-steps", type=int, default=300)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    work = Path(args.work)
    path = Path(args.json)
    results = json.loads(path.read_text()) if path.is_file() else {}
    results["environment"] = environment()
    for part in args.parts:
        started = time.perf_counter()
        if part == "orl":
            results["orl"] = bench_orl(work, args.folds, args.orl_steps)
        elif part == "omniglot":
            results["omniglot"] = bench_omniglot(work, args.omniglot_steps)
        elif part == "grocery":
            results["grocery"] = bench_grocery(work, args.grocery_steps)
        elif part == "grocery_dropout":
            results["grocery_dropout"] = bench_grocery_dropout(work, args.grocery_steps * 2)
        else:
            results["speed"] = bench_speed()
        results[part]["seconds"] = round(time.perf_counter() - started, 1)
        write_json(path, results)
        logger.info("%s done in %.0f s", part, results[part]["seconds"])
    print(json.dumps({k: v for k, v in results.items() if k != "environment"}, indent=1, default=float)[:6000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
