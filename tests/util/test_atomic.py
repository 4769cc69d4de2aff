"""Crash-safe writes (util.atomic): the file appears whole under its name, an error leaves the
old file and no temp file, and the helpers write exactly what they are given."""

import json

import numpy as np
import pytest

from saelens_lite.util.atomic import (
    TMP_SUFFIX,
    atomic_open,
    file_checksum,
    write_bytes,
    write_json,
    write_npy,
    write_text,
)


def test_a_clean_exit_replaces_the_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with atomic_open(path) as f:
        f.write(b"new ")
        assert path.read_bytes() == b"old"  # nothing visible before the rename
        f.write(b"bytes")
    assert path.read_bytes() == b"new bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_an_error_keeps_the_old_file_and_removes_the_temp(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="half way"), atomic_open(path, "w") as f:
        f.write("partial")
        raise RuntimeError("half way")
    assert path.read_text() == "old"
    assert not list(tmp_path.glob("*" + TMP_SUFFIX))
    with pytest.raises(UnicodeEncodeError):  # an encoding error midway: the same
        write_text(tmp_path / "new.js", "caf\u00e9", encoding="ascii")
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_the_helpers_write_what_they_are_given(tmp_path):
    write_bytes(tmp_path / "b", b"\x00\xff")
    write_text(tmp_path / "t", "caf\u00e9\n")
    write_json(tmp_path / "j.json", {"a": [1, 2.5]})
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    info = write_npy(tmp_path / "a.npy", arr)
    assert (tmp_path / "b").read_bytes() == b"\x00\xff"
    assert (tmp_path / "t").read_bytes() == "caf\u00e9\n".encode()
    assert json.loads((tmp_path / "j.json").read_text()) == {"a": [1, 2.5]}
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), arr)
    assert info == {"bytes": (tmp_path / "a.npy").stat().st_size, "crc32": file_checksum(tmp_path / "a.npy", "crc32")}


def test_a_bad_mode_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"mode='a' is invalid; allowed: 'wb', 'w'"), atomic_open(tmp_path / "x", "a"):
        pass
