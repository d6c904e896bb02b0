"""Every metadata file metric-sim reads back is validated field by field, and the sealed ones are checksummed.

A tamper matrix per file: each field deleted, set to null, to a wrong type and to a wrong
value, plus byte flips and truncations. Each case must end in a ``MetricSimError`` naming
the file (and the field where there is one), or, where the format allows the change, load:
never an ``AttributeError`` / ``KeyError`` / ``TypeError`` traceback.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from metric_sim import NeighborIndex, SimilarityModel, encode_sharded
from metric_sim.calibration import Calibrator
from metric_sim.errors import ConfigError, IndexLoadError, MetricSimError, ShardError
from metric_sim.export.source import resolve_source
from metric_sim.schema import CHECKSUM_KEY, canonical_sha256
from metric_sim.training.resume import resume_config
from tests.toy_encoder import ToyVectorEncoder, toy_items

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy"
TEXTS = [str(t) for t in np.load(LEGACY / "expected.npz")["texts"]]
DELETE = object()  # a tamper that removes the field


def _calibrator(metric: str = "euclidean") -> Calibrator:
    return Calibrator(weight=-0.8, bias=2.0, metric=metric, n_fit=10, fitted_on="hand-set")


TOY_MODEL = SimilarityModel(ToyVectorEncoder(in_dim=6, dim=4), "euclidean", _calibrator())
ITEMS = toy_items(12)


def _edit(path: Path, changes: dict[str, Any], *, keep_seal: bool) -> None:
    """Apply ``changes`` ({"a.b": value or DELETE}) to the JSON file; drop its seal unless ``keep_seal``."""
    payload = json.loads(path.read_text())
    if not keep_seal:
        payload.pop(CHECKSUM_KEY, None)
    for dotted, value in changes.items():
        *parents, name = dotted.split("/")
        target = payload
        for parent in parents:
            target = target[parent]
        if value is DELETE:
            target.pop(name, None)
        else:
            target[name] = value
    path.write_text(json.dumps(payload, indent=2))


def _flips(data: bytes, positions: list[int]) -> list[tuple[int, bytes]]:
    """One-bit flips of ``data`` at ``positions`` whose JSON content differs from the original."""
    original = json.loads(data)
    found = []
    for pos in positions:
        mutated = data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :]
        try:
            if json.loads(mutated) == original:  # e.g. the 17th digit of a float: the same number
                continue
        except ValueError:
            pass
        found.append((pos, mutated))
    return found


# --------------------------------------------------------------------------- index folder: metadata.json


@pytest.fixture(scope="module")
def index_template(tmp_path_factory):
    return NeighborIndex.build(TOY_MODEL, ITEMS).save(tmp_path_factory.mktemp("index") / "idx")


@pytest.fixture()
def index_dir(index_template, tmp_path):
    return Path(shutil.copytree(index_template, tmp_path / "idx"))


# (changes, what the message must name); the field names are spelled as messages spell them.
INDEX_CASES = [
    *[({field: DELETE}, field) for field in ("format_version", "kind", "params", "metric", "dim", "count", "next_key",
                                              "files", "encoder_fingerprint")],
    *[({field: None}, field) for field in ("format_version", "kind", "params", "metric", "dim", "count", "next_key",
                                            "files", "max_sq_norm", "encoder_fingerprint", "versions", "created")],
    ({"format_version": "1"}, "format_version"),
    ({"kind": 3}, "kind"),
    ({"params": []}, "params"),
    ({"metric": 1}, "metric"),
    ({"dim": "4"}, "dim"),
    ({"count": 1.5}, "count"),
    ({"next_key": True}, "next_key"),
    ({"files": []}, "files"),
    ({"max_sq_norm": "0"}, "max_sq_norm"),
    ({"encoder_fingerprint": 12}, "encoder_fingerprint"),
    ({"model_path": 7}, "model_path"),
    ({"calibrator": "x"}, "calibrator"),
    ({"versions": []}, "versions"),
    ({"created": 5}, "created"),
    ({"format_version": 2}, "format_version must be 1, got 2"),
    ({"kind": "ivf2"}, "kind"),
    ({"params": {"M": 8}}, "params"),
    ({"params": {"nlist": -1}}, "params.nlist"),
    ({"metric": "cosine"}, "metric"),
    ({"dim": 0}, "dim"),
    ({"count": -1}, "count"),
    ({"next_key": 3}, "next_key"),
    ({"max_sq_norm": -1.0}, "max_sq_norm"),
    ({"max_sq_norm": float("nan")}, "max_sq_norm"),
    ({"encoder_fingerprint": "0" * 64}, "fingerprint"),
    ({"encoder_fingerprint": ""}, "encoder_fingerprint"),
    ({"model_path": ""}, "model_path"),
    ({"calibrator/metric": "manhattan"}, "calibrator.metric"),
    ({"calibrator/weight": 0.5}, "calibrator.weight"),
    ({"calibrator/weight": "x"}, "calibrator.weight"),
    ({"calibrator/weight": DELETE}, "calibrator.weight"),
    ({"calibrator/bias": None}, "calibrator.bias"),
    ({"calibrator/threshold": 9.9}, "calibrator.threshold"),
    ({"calibrator/feature": "cubic"}, "calibrator.feature"),
    ({"calibrator/feature": "quadratic"}, "calibrator.linear_weight"),
    ({"calibrator/linear_weight": -1.0}, "calibrator.linear_weight"),
    ({"calibrator/n_fit": -1}, "calibrator.n_fit"),
    ({"files/index.faiss": DELETE}, "files['index.faiss']"),
    ({"files/store.sqlite/sha256": "xyz"}, "files['store.sqlite'].sha256"),
    ({"files/index.faiss/size": "10"}, "files['index.faiss'].size"),
    ({"versions/faiss": 1}, "versions.faiss"),
]


@pytest.mark.parametrize(("changes", "named"), INDEX_CASES, ids=[str(c) for c, _ in INDEX_CASES])
def test_tampered_index_metadata_is_refused_naming_the_field(index_dir, changes, named):
    _edit(index_dir / "metadata.json", changes, keep_seal=False)  # unsealed: the field checks alone must refuse it
    with pytest.raises(IndexLoadError) as info:
        NeighborIndex.load(index_dir, model=TOY_MODEL)
    assert "metadata.json" in str(info.value) and named in str(info.value)


@pytest.mark.parametrize(("changes", "named"), INDEX_CASES, ids=[str(c) for c, _ in INDEX_CASES])
def test_tampered_index_metadata_is_refused_when_sealed(index_dir, changes, named):
    _edit(index_dir / "metadata.json", changes, keep_seal=True)
    with pytest.raises(IndexLoadError, match="metadata.json"):
        NeighborIndex.load(index_dir, model=TOY_MODEL)


@pytest.mark.parametrize(
    "changes",
    [{"calibrator": None}, {"created": DELETE}, {"versions": DELETE}, {"max_sq_norm": DELETE},
     {"model_path": "/moved/model"}, {"versions/faiss": "9.9"}],
    ids=str,
)
def test_valid_edits_load_unsealed_and_are_caught_by_the_seal(index_dir, changes):
    _edit(index_dir / "metadata.json", changes, keep_seal=True)
    with pytest.raises(IndexLoadError, match="metadata_sha256 does not match the file's content") as info:
        NeighborIndex.load(index_dir, model=TOY_MODEL)
    assert "delete its metadata_sha256 entry to accept the edit" in str(info.value)  # says how to fix it
    _edit(index_dir / "metadata.json", {}, keep_seal=False)  # what the message tells the user to do
    assert len(NeighborIndex.load(index_dir, model=TOY_MODEL)) == len(ITEMS)


def test_new_saves_are_sealed_with_the_canonical_json_checksum(index_dir):
    meta = json.loads((index_dir / "metadata.json").read_text())
    assert meta[CHECKSUM_KEY] == canonical_sha256(meta)
    for bad, message in [("abc", "must match"), (None, "must be a string"), ("0" * 64, "does not match")]:
        _edit(index_dir / "metadata.json", {CHECKSUM_KEY: bad}, keep_seal=True)
        with pytest.raises(IndexLoadError, match=f"metadata.json: {CHECKSUM_KEY}.*{message}"):
            NeighborIndex.load(index_dir, model=TOY_MODEL)


def test_empty_or_missing_file_list_is_an_index_load_error(index_dir):
    for files in ({}, [], DELETE):
        _edit(index_dir / "metadata.json", {"files": files}, keep_seal=False)
        with pytest.raises(IndexLoadError, match=r"metadata.json: files"):
            NeighborIndex.load(index_dir, model=TOY_MODEL)


def test_index_without_fingerprint_accepts_no_model(tmp_path):
    vectors = TOY_MODEL.embed(ITEMS)
    folder = NeighborIndex.from_embeddings(vectors, [str(i) for i in range(12)], metric="euclidean").save(tmp_path / "i")
    assert json.loads((folder / "metadata.json").read_text())["encoder_fingerprint"] is None
    loaded = NeighborIndex.load(folder)  # vector queries only
    assert loaded.search_embeddings(vectors[:1], k=1)[0].ids == ["0"]
    other = SimilarityModel(ToyVectorEncoder(in_dim=6, dim=4, seed=7), "euclidean")
    for model in (TOY_MODEL, other):  # neither can be verified, so neither is accepted silently
        with pytest.raises(IndexLoadError, match="metadata.json records no encoder_fingerprint"):
            NeighborIndex.load(folder, model=model)


def test_calibrator_of_another_metric_in_index_metadata_is_refused(index_dir):
    _edit(index_dir / "metadata.json", {"calibrator": _calibrator("manhattan").to_dict()}, keep_seal=False)
    with pytest.raises(IndexLoadError, match="calibrator.metric is 'manhattan', but metadata.json says 'euclidean'"):
        NeighborIndex.load(index_dir, model=TOY_MODEL)


def test_every_bit_flip_and_truncation_of_sealed_metadata_is_refused(index_dir):
    meta_file = index_dir / "metadata.json"
    data = meta_file.read_bytes()
    flips = _flips(data, list(range(len(data))))
    cuts = [data[:n] for n in range(0, len(data), max(1, len(data) // 16))]
    for mutated in [m for _, m in flips] + cuts:
        meta_file.write_bytes(mutated)
        with pytest.raises(IndexLoadError, match="metadata.json"):
            NeighborIndex.load(index_dir, model=TOY_MODEL)
    assert len(flips) > 0.9 * len(data)


# --------------------------------------------------------------------------- model folder: metric_sim.json


@pytest.fixture()
def model_dir(tmp_path):
    return Path(shutil.copytree(LEGACY / "model", tmp_path / "model"))


MODEL_CASES = [
    ({"format_version": "1"}, "format_version"),
    ({"format_version": 2}, "format_version"),
    ({"format_version": None}, "format_version"),
    ({"encoder": []}, "encoder"),
    ({"encoder": None}, "encoder"),
    ({"encoder/kind": 5}, "encoder.kind"),
    ({"encoder/kind": ""}, "encoder.kind"),
    ({"encoder/pooling": "sum"}, "encoder.pooling"),
    ({"encoder/pooling": 3}, "encoder.pooling"),
    ({"encoder/normalize": "false"}, "encoder.normalize"),
    ({"encoder/normalize": None}, "encoder.normalize"),
    ({"encoder/max_length": "32"}, "encoder.max_length"),
    ({"encoder/max_length": 0}, "encoder.max_length"),
    ({"encoder/projection": 5}, "encoder.projection"),
    ({"encoder/projection": {"in_features": "a", "out_features": 4}}, "encoder.projection.in_features"),
    ({"metric": "cosine"}, "metric"),
    ({"metric": 5}, "metric"),
    ({"calibrator": "x"}, "calibrator"),
    ({"calibrator": []}, "calibrator"),
    ({"calibrator/metric": "manhattan"}, "calibrator.metric"),
    ({"calibrator/metric": None}, "calibrator.metric"),
    ({"calibrator/weight": 1.0}, "calibrator.weight"),
    ({"calibrator/weight": DELETE}, "calibrator.weight"),
    ({"calibrator/bias": None}, "calibrator.bias"),
    ({"calibrator/bias": "2"}, "calibrator.bias"),
    ({"calibrator/threshold": 0.1}, "calibrator.threshold"),
    ({"calibrator/feature": "cubic"}, "calibrator.feature"),
    ({"calibrator/feature": "quadratic"}, "calibrator.linear_weight"),
    ({"calibrator/linear_weight": -1.0}, "calibrator.linear_weight"),
    ({"calibrator/linear_weight": "x"}, "calibrator.linear_weight"),
    ({"calibrator/n_fit": "many"}, "calibrator.n_fit"),
    ({"calibrator/fitted_on": 3}, "calibrator.fitted_on"),
]


@pytest.mark.parametrize(("changes", "named"), MODEL_CASES, ids=[str(c) for c, _ in MODEL_CASES])
def test_tampered_model_config_is_a_config_error_naming_the_field(model_dir, changes, named):
    _edit(model_dir / "metric_sim.json", changes, keep_seal=False)
    with pytest.raises(ConfigError) as info:
        SimilarityModel.from_pretrained(model_dir)
    assert f"{model_dir / 'metric_sim.json'}: {named}" in str(info.value)


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"metric": "euclidean",}', b"\xff\xfe{}", b"[" * 100_000])
def test_corrupted_model_config_names_the_file(model_dir, content):
    (model_dir / "metric_sim.json").write_bytes(content)
    with pytest.raises(ConfigError, match=f"{model_dir / 'metric_sim.json'}: "):
        SimilarityModel.from_pretrained(model_dir)


def test_model_config_flips_load_or_name_the_file(model_dir):
    # metric_sim.json carries no checksum (see metric_sim/model.py): a flip is either a valid edit or an error.
    config_file = model_dir / "metric_sim.json"
    data = config_file.read_bytes()
    positions = random.Random(13).sample(range(len(data)), 40)
    for _, mutated in _flips(data, positions):
        config_file.write_bytes(mutated)
        try:
            SimilarityModel.from_pretrained(model_dir)
        except MetricSimError as exc:
            assert str(config_file) in str(exc), exc


def test_save_calibrator_keeps_the_file_valid_and_refuses_a_damaged_one(model_dir):
    model = SimilarityModel.from_pretrained(model_dir)
    model.calibrator = Calibrator(weight=-1.5, bias=1.0, metric="euclidean")
    model.save_calibrator(model_dir)
    assert SimilarityModel.from_pretrained(model_dir).calibrator == model.calibrator
    _edit(model_dir / "metric_sim.json", {"calibrator": "broken"}, keep_seal=False)
    model.save_calibrator(model_dir)  # a damaged old calibrator is what it replaces
    assert SimilarityModel.from_pretrained(model_dir).calibrator == model.calibrator
    _edit(model_dir / "metric_sim.json", {"encoder/max_length": "32"}, keep_seal=False)
    with pytest.raises(ConfigError, match="encoder.max_length"):
        model.save_calibrator(model_dir)


# --------------------------------------------------------------------------- sharded work folder: plan.json + manifests


@pytest.fixture(scope="module")
def legacy_model():
    return SimilarityModel.from_pretrained(LEGACY / "model")


@pytest.fixture()
def work_dir(tmp_path):
    return Path(shutil.copytree(LEGACY / "shards", tmp_path / "shards"))  # unsealed: written before the seal


def _encode(model, work):
    return encode_sharded(model, TEXTS, work, batch_size=2, shard_size=4)


PLAN_KEYS = ["format_version", "n_texts", "n_shards", "batch_size", "shard_size", "max_length", "dim",
             "corpus_fingerprint", "model_fingerprint", "order_sha256"]
PLAN_CASES = [({key: change}, key) for key in PLAN_KEYS for change in (DELETE, None, [1])] + [
    ({"n_texts": 9}, "n_texts"), ({"dim": 0}, "dim"), ({"order_sha256": "abc"}, "order_sha256"),
    ({"model_fingerprint": ""}, "model_fingerprint"), ({"format_version": 2}, "format_version"),
]


@pytest.mark.parametrize(("changes", "named"), PLAN_CASES, ids=[str(c) for c, _ in PLAN_CASES])
def test_tampered_plan_is_a_shard_error_naming_the_field(legacy_model, work_dir, changes, named):
    _edit(work_dir / "plan.json", changes, keep_seal=False)
    with pytest.raises(ShardError) as info:
        _encode(legacy_model, work_dir)
    assert "plan.json" in str(info.value) and named in str(info.value)


@pytest.mark.parametrize("content", [b"", b"{", b"[1]", b"null", b"\xff"])
def test_corrupted_plan_is_a_shard_error_naming_it(legacy_model, work_dir, content):
    (work_dir / "plan.json").write_bytes(content)
    with pytest.raises(ShardError, match=r"plan.json: .*remove .* to start over"):
        _encode(legacy_model, work_dir)


def test_sealed_plan_refuses_every_bit_flip(legacy_model, tmp_path):
    work = tmp_path / "fresh"
    _encode(legacy_model, work)
    plan = json.loads((work / "plan.json").read_text())
    assert plan[CHECKSUM_KEY] == canonical_sha256(plan)
    data = (work / "plan.json").read_bytes()
    for _, mutated in _flips(data, random.Random(5).sample(range(len(data)), 60)):
        (work / "plan.json").write_bytes(mutated)
        with pytest.raises(ShardError, match="plan.json"):
            _encode(legacy_model, work)


MANIFEST_CASES = [
    {"dim": "32"}, {"dim": None}, {"start": DELETE}, {"rows_sha256": 5}, {"size": "640"}, {"sha256": None},
    {"format_version": "1"}, {"model_fingerprint": []},
]


@pytest.mark.parametrize("changes", MANIFEST_CASES, ids=str)
def test_damaged_manifest_means_encode_the_shard_again(legacy_model, work_dir, changes, caplog):
    _edit(work_dir / "shard-00001.json", changes, keep_seal=False)
    with caplog.at_level(logging.WARNING, logger="metric_sim.index.sharded"):
        result = _encode(legacy_model, work_dir)
    assert result.encoded == [1] and result.reused == [0]
    field = next(iter(changes))
    assert any("shard-00001.json" in r.getMessage() and field in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(result.embeddings, np.load(LEGACY / "expected.npz")["embeddings"], atol=1e-5)


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b"\xff"])
def test_unreadable_manifest_means_encode_the_shard_again(legacy_model, work_dir, content):
    (work_dir / "shard-00000.json").write_bytes(content)
    assert _encode(legacy_model, work_dir).encoded == [0]


def test_well_typed_manifest_of_another_plan_is_still_refused(legacy_model, work_dir):
    _edit(work_dir / "shard-00001.json", {"dim": 64}, keep_seal=False)
    with pytest.raises(ShardError, match="shard-00001.json was made for another corpus, model or plan: dim 64"):
        _encode(legacy_model, work_dir)


def test_sealed_manifest_edit_is_caught_by_the_seal(legacy_model, tmp_path, caplog):
    work = tmp_path / "fresh"
    _encode(legacy_model, work)
    _edit(work / "shard-00000.json", {"dim": 64}, keep_seal=True)
    with caplog.at_level(logging.WARNING, logger="metric_sim.index.sharded"):
        assert _encode(legacy_model, work).encoded == [0]
    assert any("metadata_sha256 does not match" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- run folder: train_config.json, metrics.json


@pytest.fixture()
def run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("train_config.json", "metrics.json"):
        shutil.copy(LEGACY / "run" / name, run / name)
    (run / "model").symlink_to(LEGACY / "run" / "model")  # read only, never written
    return run


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b"7", b"\xff", b"[" * 100_000])
@pytest.mark.parametrize("name", ["train_config.json", "metrics.json"])
def test_corrupted_run_files_name_the_file(run_dir, name, content):
    (run_dir / name).write_bytes(content)
    with pytest.raises(ConfigError, match=f"{run_dir / name}: "):
        resolve_source(run_dir)
    if name == "train_config.json":
        with pytest.raises(ConfigError, match=f"{run_dir / name}: "):
            resume_config(run_dir, None)


@pytest.mark.parametrize(
    ("name", "changes", "named"),
    [
        ("train_config.json", {"run": 5}, "run"),
        ("train_config.json", {"run": None}, "run"),
        ("metrics.json", {"dev": 5}, "dev"),
        ("metrics.json", {"dev/pairs": [32]}, "dev.pairs"),
        ("metrics.json", {"metric": None}, "metric"),
    ],
)
def test_tampered_run_files_name_the_field(run_dir, name, changes, named):
    _edit(run_dir / name, changes, keep_seal=False)
    with pytest.raises(ConfigError, match=f"{run_dir / name}: {named}"):
        resolve_source(run_dir)


@pytest.mark.parametrize(("changes", "named"), [({"batch_size": "x"}, "batch_size"), ({"seed": None}, "seed"),
                                                ({"no_such_key": 1}, "no_such_key"), ({"run": []}, "run")])
def test_resume_names_the_file_and_field(run_dir, changes, named):
    _edit(run_dir / "train_config.json", changes, keep_seal=False)
    with pytest.raises(ConfigError, match=f"{run_dir / 'train_config.json'}: .*{named}"):
        resume_config(run_dir, None)
    assert resolve_source(LEGACY / "run").train_config is not None  # the untouched fixture still resolves
