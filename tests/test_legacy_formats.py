"""Folders written by an earlier metric-sim load unchanged and compute the same vectors.

The fixtures under ``tests/fixtures/legacy`` were written by the commit named in their
``MADE_BY.json`` with ``tests/fixtures/make_legacy_fixtures.py``; ``expected.npz`` holds
what that code computed from them. Each test copies a folder to ``tmp_path`` first, so
a load that rewrites files cannot damage the fixture.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from metric_sim import NeighborIndex, SimilarityModel, encode_sharded

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy"
EXPECTED = np.load(LEGACY / "expected.npz")
TEXTS = [str(t) for t in EXPECTED["texts"]]
TOL = 1e-5  # float32 kernels may differ in the last bits across library versions


def _copy(name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(LEGACY / name, target)
    return target


def test_fixtures_name_the_commit_that_wrote_them():
    made_by = json.loads((LEGACY / "MADE_BY.json").read_text())
    assert len(made_by["metric_sim_commit"]) == 40


def test_model_folder_loads_with_the_same_vectors_and_probabilities(tmp_path):
    model = SimilarityModel.from_pretrained(_copy("model", tmp_path))
    assert model.metric.value == "euclidean" and model.calibrator is not None
    # The fingerprint is what an index or a shard folder records: it must not change either.
    recorded = json.loads((LEGACY / "index" / "metadata.json").read_text())["encoder_fingerprint"]
    assert model.encoder.fingerprint() == recorded
    np.testing.assert_allclose(model.embed(TEXTS), EXPECTED["embeddings"], atol=TOL)
    np.testing.assert_allclose(model.distance(TEXTS[:4], TEXTS[4:]), EXPECTED["distances"], atol=TOL)
    np.testing.assert_allclose(model.predict_proba(TEXTS[:4], TEXTS[4:]), EXPECTED["probabilities"], atol=TOL)


def test_run_folder_loads_its_model(tmp_path):
    model = SimilarityModel.from_pretrained(_copy("run", tmp_path))
    np.testing.assert_allclose(model.embed(TEXTS), EXPECTED["run_embeddings"], atol=TOL)


@pytest.mark.parametrize("name", ["index", "index_hnsw"])
def test_index_folder_loads_and_searches(tmp_path, name):
    model = SimilarityModel.from_pretrained(LEGACY / "model")
    index = NeighborIndex.load(_copy(name, tmp_path), model=model)
    assert len(index) == len(TEXTS)
    found = index.search(["how do i learn python", "how to cook rice"], k=3)
    if name == "index":
        assert [r.ids for r in found] == EXPECTED["search_ids"].tolist()
        np.testing.assert_allclose([r.distances for r in found], EXPECTED["search_distances"], atol=TOL)
    assert [r.ids[0] for r in found] == [index.ids[0], index.ids[2]]  # each text finds itself first


def test_shard_folder_is_reused_not_reencoded(tmp_path):
    model = SimilarityModel.from_pretrained(LEGACY / "model")
    work = _copy("shards", tmp_path)
    result = encode_sharded(model, TEXTS, work, batch_size=2, shard_size=4)
    assert result.encoded == [] and sorted(result.reused) == [0, 1]
    np.testing.assert_allclose(result.embeddings, EXPECTED["embeddings"], atol=TOL)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_export_bundle_loads_in_both_backends(tmp_path, backend):
    pytest.importorskip("onnxruntime") if backend == "onnx" else None
    model = SimilarityModel.from_pretrained(_copy("export", tmp_path), backend=backend)
    np.testing.assert_allclose(model.embed(TEXTS), EXPECTED["embeddings"], atol=1e-4 if backend == "onnx" else TOL)
    np.testing.assert_allclose(model.predict_proba(TEXTS[:4], TEXTS[4:]), EXPECTED["probabilities"], atol=1e-4)
