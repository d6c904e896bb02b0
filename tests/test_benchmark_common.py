"""benchmarks/_common.py: the shared end of a benchmark run (JSON + markdown, each written atomically)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

from _common import write_json, write_outputs  # noqa: E402

PAYLOAD = {"rows": [{"system": "a", "ap": np.float32(0.5)}], "n": 3}
TEXT = "| system | AP |\n|---|---|\n| a | 0.5 |"


def test_writes_both_files_with_the_exact_contents(tmp_path):
    out = tmp_path / "sub" / "deeper"  # missing folders are made
    written = write_outputs(out / "r.json", PAYLOAD, str(out / "r.md"), TEXT)
    assert written == {"json": out / "r.json", "markdown": out / "r.md"}
    assert list(written) == ["json", "markdown"]
    # the same bytes the scripts wrote before the helper existed
    assert (out / "r.json").read_text(encoding="utf-8") == json.dumps(PAYLOAD, indent=2, default=float) + "\n"
    assert json.loads((out / "r.json").read_text()) == {"rows": [{"system": "a", "ap": 0.5}], "n": 3}
    assert (out / "r.md").read_bytes() == (TEXT + "\n").encode("utf-8")
    assert sorted(p.name for p in out.iterdir()) == ["r.json", "r.md"]  # no temporary file left


def test_end_replaces_the_trailing_newline(tmp_path):
    write_outputs(None, None, tmp_path / "r.md", "– ü", end="")
    assert (tmp_path / "r.md").read_bytes() == "– ü".encode()


@pytest.mark.parametrize("json_path, md_path, expected", [
    (None, None, []), ("", "", []), ("r.json", None, ["r.json"]), (None, "r.md", ["r.md"])])
def test_none_or_empty_path_skips_that_file(tmp_path, json_path, md_path, expected):
    written = write_outputs(json_path and tmp_path / json_path, PAYLOAD, md_path and tmp_path / md_path, TEXT)
    assert sorted(p.name for p in tmp_path.iterdir()) == expected
    assert sorted(p.name for p in written.values()) == expected


def test_failure_mid_write_keeps_the_old_file_and_leaves_no_partial_one(tmp_path, monkeypatch):
    md = tmp_path / "r.md"
    md.write_text("old\n", encoding="utf-8")
    real_write_text = Path.write_text

    def half_then_fail(self, data, *args, **kwargs):
        real_write_text(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_outputs(None, None, md, TEXT)
    with pytest.raises(OSError, match="disk full"):
        write_outputs(tmp_path / "r.json", PAYLOAD, None, TEXT)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.md"]
    assert md.read_text(encoding="utf-8") == "old\n"


def test_unserialisable_payload_writes_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_outputs(tmp_path / "r.json", {"x": object()}, tmp_path / "r.md", TEXT)
    assert list(tmp_path.iterdir()) == []


def test_write_json_returns_the_path_and_cleans_up(tmp_path):
    path = write_json(tmp_path / "r.json", [1, 2])
    assert path == tmp_path / "r.json" and path.read_text() == "[\n  1,\n  2\n]\n"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
