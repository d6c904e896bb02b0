from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from metric_sim.errors import InvalidArgumentTypeError, MetricSimError
from metric_sim.items import describe_item, item_id, text_id


def test_text_id_is_pinned():
    # Computed with the code before items.py existed; saved data (splits, indexes) depends on it.
    assert text_id("How do I learn Python?") == "hc0d59e78e04a0a8e"
    assert item_id("How do I learn Python?") == "hc0d59e78e04a0a8e"


def test_text_id_keeps_old_behaviour():
    assert text_id("abc") == "h" + "a9993e364706816aba3e25717850c26c9cd0d89d"[:16]
    assert text_id("\ud800") == item_id("\ud800")  # a lone surrogate hashes, no crash
    assert text_id("abc") != text_id("abc ")


@pytest.mark.parametrize("bad", [3, b"abc", None, ["abc"]])
def test_text_id_rejects_non_str(bad):
    with pytest.raises(InvalidArgumentTypeError, match="text must be a str") as info:
        text_id(bad)  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError) and isinstance(info.value, MetricSimError)


def test_array_ids_differ_by_dtype_shape_and_content():
    base = np.array([0.5, 1.0, -2.0, 3.25], dtype=np.float32)
    ids = {
        item_id(base),
        item_id(base.astype(np.float64)),
        item_id(base.reshape(2, 2)),
        item_id(base.view(np.int32)),  # same bytes, other dtype
        item_id(np.array([0.5, 1.0, -2.0, 3.5], dtype=np.float32)),
    }
    assert len(ids) == 5
    assert all(i.startswith("v") and len(i) == 17 for i in ids)


def test_array_id_is_stable_and_ignores_memory_layout():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert item_id(a) == item_id(a.copy()) == item_id(np.asfortranarray(a))
    assert item_id(a[:, ::2]) == item_id(np.ascontiguousarray(a[:, ::2]))
    # pinned: the id of a vector must not change between versions
    assert item_id(np.array([1.0, 2.0], dtype=np.float32)) == item_id(np.array([1, 2], dtype="<f4"))


def test_array_id_matches_its_definition():
    a = np.array([[1, 2, 3]], dtype=np.int64)
    import hashlib

    expected = hashlib.sha1(b"<i8|(1, 3)|" + a.tobytes()).hexdigest()[:16]
    assert item_id(a) == "v" + expected


def test_object_arrays_are_refused():
    with pytest.raises(InvalidArgumentTypeError, match="object"):
        item_id(np.array(["a", None], dtype=object))


def test_bytes_and_record_ids():
    assert item_id(b"abc") == "b" + "a9993e364706816aba3e25717850c26c9cd0d89d"[:16]
    assert item_id(bytearray(b"abc")) == item_id(b"abc")
    assert item_id(b"abc") != item_id("abc")
    rec = {"title": "A cat", "size": 3, "tags": ["x", "y"]}
    same = {"tags": ["x", "y"], "size": 3, "title": "A cat"}  # other key order
    assert item_id(rec) == item_id(same)
    assert item_id(rec).startswith("r") and len(item_id(rec)) == 17
    assert item_id(rec) != item_id({**rec, "size": 4})
    assert item_id({"a": 1}) != item_id({"a": "1"})


def test_record_id_is_recomputable_from_its_description():
    rec = {"name": "Zoë", "vec": np.array([0.1, 0.2], dtype=np.float32), "n": np.int64(3)}
    stored = json.loads(describe_item(rec))
    assert stored == {"n": 3, "name": "Zoë", "vec": [float(np.float32(0.1)), float(np.float32(0.2))]}
    assert item_id(stored) == item_id(rec)


def test_record_field_names_must_be_str():
    with pytest.raises(InvalidArgumentTypeError, match="field names must be str"):
        item_id({1: "a"})


def test_describe_item_round_trips():
    assert describe_item("How do I learn Python?") == "How do I learn Python?"
    for dtype in (np.float32, np.float64, np.int16):
        a = (np.random.default_rng(0).standard_normal((3, 2)) * 100).astype(dtype)
        text = describe_item(a)
        assert " " not in text  # compact
        assert np.array_equal(np.asarray(json.loads(text), dtype=dtype), a)
    rec = {"b": [1, 2.5, None, True], "a": {"z": "é", "y": 1}}
    text = describe_item(rec)
    assert text == '{"a":{"y":1,"z":"é"},"b":[1,2.5,null,true]}'
    assert json.loads(text) == rec
    assert describe_item(b"abc") == "<3 bytes sha1:a9993e364706816a>"


class _Image:
    pass


def test_unknown_types_say_how_to_register():
    with pytest.raises(InvalidArgumentTypeError, match=r"item_id\.register\(MyType\)") as info:
        item_id(_Image())
    assert "_Image" in str(info.value)
    with pytest.raises(InvalidArgumentTypeError, match=r"describe_item\.register\(MyType\)"):
        describe_item(1.5)


def test_registering_a_new_item_type():
    class Point:
        def __init__(self, x: float, y: float) -> None:
            self.x, self.y = x, y

    @item_id.register(Point)
    def _(item: Point) -> str:
        return item_id({"x": item.x, "y": item.y})

    assert item_id(Point(1, 2)) == item_id({"y": 2, "x": 1})


def test_items_and_clusters_import_light():
    code = (
        "import sys, metric_sim.items, metric_sim.clusters; "
        "print(sorted(m for m in ('datasets', 'torch', 'pyarrow', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
