"""service.atomic: the one write-to-temp-then-rename helper."""

from __future__ import annotations

import json

import pytest
from rankiq.service.atomic import atomic_path, atomic_write, write_json, write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_write(target) as fh:
        fh.write('{"v": 2')
        raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_write_json_is_strict_by_default(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "x.json", {"v": float("nan")})
    assert not list(tmp_path.iterdir())
    write_json(tmp_path / "x.json", {"b": 1, "a": float("inf")}, sort_keys=True, allow_nan=True)
    assert (tmp_path / "x.json").read_text() == '{\n  "a": Infinity,\n  "b": 1\n}\n'


def test_text_bytes_and_named_writers(tmp_path):
    write_text(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"
    with atomic_write(tmp_path / "b.bin", "wb") as fh:
        fh.write(b"\0\1")
    assert (tmp_path / "b.bin").read_bytes() == b"\0\1"
    with atomic_path(tmp_path / "c.npz") as tmp:
        assert tmp.suffix == ".npz" and tmp.parent == tmp_path and tmp != tmp_path / "c.npz"
        tmp.write_bytes(b"npz")
    assert (tmp_path / "c.npz").read_bytes() == b"npz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "c.npz", "t.txt"]
    with pytest.raises(ValueError), atomic_write(tmp_path / "d", "a"):
        pass
