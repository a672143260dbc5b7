"""rankiq.service.io on zips and directories: partial failures, hostile archives, limits,
sniffing."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers_io import assert_no_phi, bundled, dicom_bytes, mr_dataset, uid, write, write_zip
from rankiq.service.errors import (
    HostileArchive,
    InputTooLarge,
    NonImageInput,
    UnreadableInput,
    UnsupportedInput,
)
from rankiq.service.io import (
    ReadLimits,
    display_name,
    load_series,
    member_name,
    read_series,
    read_upload,
    scan_instances,
)


def _series_members(n: int = 3) -> dict[str, bytes]:
    return {f"study/s{i}.dcm": dicom_bytes(mr_dataset(np.full((16, 16), i), instance=i + 1,
                                                      position=(0, 0, i)))
            for i in range(n)}


def test_zip_is_read_and_bad_members_become_failures(tmp_path):
    members = _series_members()
    members["study/truncated.dcm"] = bundled("MR_truncated.dcm").read_bytes()
    members["study/notes.txt"] = b"just text, not an image"
    members["study/sr.dcm"] = bundled("test-SR.dcm").read_bytes()
    path = write_zip(tmp_path / "scan.zip", members)
    result = read_series(path)
    assert len(result) == 1 and result[0].shape == (3, 16, 16)
    np.testing.assert_array_equal(result[0].pixels[:, 0, 0], [0, 1, 2])
    names = list(members)
    shown = {member_name(display_name(str(path)), names.index(m) + 1, m): m for m in names}
    assert shown[result[0].source_files[0]] == "study/s0.dcm"
    reasons = {shown[f.source]: f.reason for f in result.failures}
    assert reasons == {"study/truncated.dcm": UnreadableInput.reason,
                       "study/notes.txt": UnsupportedInput.reason,
                       "study/sr.dcm": NonImageInput.reason}


def test_extension_is_ignored_content_is_sniffed(tmp_path):
    path = write_zip(tmp_path / "images.dcm", _series_members(2))  # a zip named .dcm
    assert read_series(path)[0].shape == (2, 16, 16)
    dcm = tmp_path / "scan.h5"  # a DICOM named .h5
    dcm.write_bytes(dicom_bytes(mr_dataset(np.ones((16, 16)))))
    assert read_series(dcm)[0].shape == (1, 16, 16)
    assert read_upload(dcm.read_bytes(), "photo.jpg")[0].shape == (1, 16, 16)
    with pytest.raises(UnsupportedInput) as exc:
        read_upload(b"%PDF-1.4 not an image" * 10, "scan.dcm")
    assert exc.value.http_status == 415 and display_name("scan.dcm") in str(exc.value)


@pytest.mark.parametrize("evil", ["../../etc/passwd.dcm", "/abs/x.dcm", "a/../../x.dcm",
                                  "C:\\Windows\\x.dcm", "..\\..\\x.dcm"])
def test_path_traversal_names_refuse_the_archive(tmp_path, evil):
    members = _series_members(1)
    members[evil] = dicom_bytes(mr_dataset(np.ones((16, 16))))
    path = write_zip(tmp_path / "evil.zip", members)
    with pytest.raises(HostileArchive) as exc:
        read_series(path)
    msg = str(exc.value)
    assert display_name(str(path)) in msg and "traversal" in msg and evil not in msg
    assert_no_phi(msg)
    with pytest.raises(HostileArchive):
        read_upload(path.read_bytes(), "upload.zip")
    with pytest.raises(HostileArchive):
        list(scan_instances(path))


def test_hostile_zip_inside_a_directory_is_a_failure_and_the_rest_is_read(tmp_path):
    write_zip(tmp_path / "evil.zip", {"../x.dcm": b"whatever"})
    write(mr_dataset(np.ones((16, 16))), tmp_path / "ok.dcm")
    result = read_series(tmp_path)
    assert len(result) == 1
    (failure,) = result.failures
    assert failure.reason == HostileArchive.reason and failure.source.startswith("file-")
    scanned = list(scan_instances(tmp_path))
    assert sum(getattr(x, "reason", None) == HostileArchive.reason for x in scanned) == 1


def test_zip_bomb_by_compression_ratio_is_refused_with_default_limits(tmp_path):
    path = write_zip(tmp_path / "bomb.zip", {"zeros.dcm": bytes(16 * 1024 * 1024)})
    with pytest.raises(HostileArchive, match=display_name(str(path)) + ".*zip bomb"):
        read_series(path)


@pytest.mark.parametrize("limits, what", [
    (ReadLimits(max_entry_uncompressed=600), "per-entry"),
    (ReadLimits(max_total_uncompressed=2_000), "in total"),
    (ReadLimits(max_zip_entries=2), "entries"),
])
def test_zip_limits_refuse_the_archive(tmp_path, limits, what):
    path = write_zip(tmp_path / "big.zip", _series_members(3))  # 3 entries of ~1 kB each
    with pytest.raises(HostileArchive) as exc:
        read_series(path, limits=limits)
    assert what in str(exc.value) and display_name(str(path)) in str(exc.value)
    with pytest.raises(HostileArchive):
        read_upload(path.read_bytes(), "big.zip", limits=limits)


def test_nested_zip_is_not_opened(tmp_path):
    inner = write_zip(tmp_path / "inner.zip", _series_members(1)).read_bytes()
    members = _series_members(2)
    members["inner.zip"] = inner
    result = read_series(write_zip(tmp_path / "outer.zip", members))
    assert len(result) == 1 and result[0].shape[0] == 2
    (failure,) = result.failures
    assert failure.reason == UnsupportedInput.reason and "nested" in failure.message


def test_truncated_zip_is_unreadable(tmp_path):
    data = write_zip(tmp_path / "whole.zip", _series_members(3)).read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(data[: len(data) // 2])
    result = read_series(cut)
    assert not result
    (failure,) = result.failures
    assert failure.reason == UnreadableInput.reason and failure.source == display_name(str(cut))
    with pytest.raises(UnreadableInput, match=display_name("cut.zip")):
        read_upload(cut.read_bytes(), "cut.zip")


def test_corrupt_member_is_a_failure(tmp_path):
    path = write_zip(tmp_path / "crc.zip", _series_members(2), compression=zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    marker = data.find(b"DICM", data.find(b"DICM") + 1)  # second member's content
    data[marker + 600 : marker + 700] = bytes(100)  # flips content: CRC check fails
    path.write_bytes(bytes(data))
    result = read_series(path)
    assert len(result) == 1 and result[0].shape[0] == 1
    (failure,) = result.failures
    assert failure.reason == UnreadableInput.reason
    assert failure.source == member_name(display_name(str(path)), 2, "study/s1.dcm")


def test_upload_zip_without_series_raises_its_first_failure(tmp_path):
    path = write_zip(tmp_path / "sr.zip", {"a.dcm": bundled("test-SR.dcm").read_bytes(),
                                           "b.txt": b"text"})
    with pytest.raises(NonImageInput) as exc:
        read_upload(path.read_bytes(), "reports.zip")
    assert member_name(display_name("reports.zip"), 1, "a.dcm") in str(exc.value)
    with pytest.raises(UnreadableInput, match="no files"):
        read_upload(write_zip(tmp_path / "empty.zip", {}).read_bytes(), "empty.zip")


def test_file_and_upload_byte_limits(tmp_path):
    path = write(mr_dataset(np.ones((32, 32))), tmp_path / "sub" / "a.dcm")
    small = ReadLimits(max_bytes=1000)
    with pytest.raises(InputTooLarge, match=display_name(str(path))):
        read_series(path, limits=small)
    with pytest.raises(InputTooLarge, match=display_name("up.dcm")):
        read_upload(path.read_bytes(), "up.dcm", limits=small)
    (failure,) = read_series(tmp_path, limits=small).failures  # inside a directory: reported
    assert failure.reason == InputTooLarge.reason


def test_series_above_max_slices_is_refused(tmp_path):
    path = write_zip(tmp_path / "s.zip", _series_members(3))
    with pytest.raises(InputTooLarge, match="slices"):
        read_series(path, limits=ReadLimits(max_slices=2))


def test_missing_path_is_reported(tmp_path):
    result = read_series([tmp_path / "nope.dcm"])
    assert not result and result.failures[0].reason == UnreadableInput.reason


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_directory_symlink_loops_are_not_followed(tmp_path):
    write(mr_dataset(np.ones((16, 16))), tmp_path / "d" / "a.dcm")
    os.symlink(tmp_path / "d", tmp_path / "d" / "loop")
    result = read_series(tmp_path)
    assert len(result) == 1 and result[0].shape[0] == 1


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlinked_folders_are_not_scanned(tmp_path):
    """A symlink to a folder outside the scanned tree is not followed (by read_series nor by
    the header-only scan of batch QA): only the series really inside is found."""
    write(mr_dataset(np.ones((16, 16)), series_uid=uid("inside")), tmp_path / "in" / "a.dcm")
    write(mr_dataset(np.ones((16, 16)), series_uid=uid("outside")), tmp_path / "out" / "b.dcm")
    os.symlink(tmp_path / "out", tmp_path / "in" / "link")
    result = read_series(tmp_path / "in")
    assert len(result) == 1 and not result.failures
    assert result[0].source_files == [display_name(str(tmp_path / "in" / "a.dcm"))]
    refs = [r for r in scan_instances(tmp_path / "in") if hasattr(r, "series_key")]
    assert [os.path.basename(r.path) for r in refs] == ["a.dcm"]


def test_scan_streams_zip_members_and_load_reuses_an_open_zip(tmp_path):
    members = _series_members(3)
    members["bad.txt"] = b"nope"
    path = write_zip(tmp_path / "a.zip", members)
    items = list(scan_instances(path))
    refs = [i for i in items if hasattr(i, "series_key")]
    assert [r.member for r in refs] == ["study/s0.dcm", "study/s1.dcm", "study/s2.dcm"]
    assert all(r.path == str(path) and r.size > 0 for r in refs)
    assert len(items) - len(refs) == 1
    with zipfile.ZipFile(path) as zf:
        series = load_series(refs[::-1], zips={str(path): zf})
        assert zf.fp is not None  # a caller's zip stays open
    np.testing.assert_array_equal(series.pixels[:, 0, 0], [0, 1, 2])
    np.testing.assert_array_equal(load_series(refs).pixels, series.pixels)


def _too_deep(parent: Path) -> Path:
    """A chain of folders under ``parent`` whose full path is longer than PATH_MAX (4096), made
    through directory descriptors: listing its deepest folder fails with ENAMETOOLONG for every
    user, root included (root ignores permission bits)."""
    fd = os.open(parent, os.O_RDONLY)
    name = "d" * 200
    path = parent
    try:
        while len(str(path)) <= 4200:
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd, path = child, path / name
    finally:
        os.close(fd)
    return path


def _unlistable_kinds() -> list[str]:
    # permission bits stop only a non-root user; a path past PATH_MAX stops everyone
    kinds = ["path_too_long"]
    if os.name == "posix" and os.geteuid() != 0:
        kinds.append("permission")
    return kinds


@pytest.mark.skipif(os.name != "posix", reason="POSIX folders")
@pytest.mark.parametrize("kind", _unlistable_kinds())
def test_unlistable_folder_is_reported_and_the_rest_is_read(tmp_path, kind):
    write(mr_dataset(np.ones((16, 16))), tmp_path / "a" / "x.dcm")
    locked = tmp_path / "b"
    locked.mkdir()
    if kind == "permission":
        locked.chmod(0)
    else:
        locked = _too_deep(locked)
    try:
        result = read_series(tmp_path)
    finally:
        if kind == "permission":
            locked.chmod(0o755)
    assert len(result) == 1
    (failure,) = result.failures
    assert failure.source == display_name(str(locked)) and "cannot be listed" in failure.message


def test_scan_in_processes_yields_what_one_process_yields_in_the_same_order(tmp_path,
                                                                             monkeypatch):
    """The parallel header walk (QA with several workers) gives the serial walk's refs and
    failures, in its order, across chunk boundaries, zip members and unreadable files."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from rankiq.service.io import read as read_module

    members = _series_members(4)
    members["bad.txt"] = b"nope"
    write_zip(tmp_path / "b.zip", members)
    for i in range(5):
        write(mr_dataset(np.full((16, 16), i), instance=i + 1, position=(0, 0, i)),
              tmp_path / "dir" / f"{i}.dcm")
    (tmp_path / "dir" / "2b.dcm").write_bytes(b"DICM" * 10)  # neither DICOM nor anything else
    (tmp_path / "dir" / "3b.dcm").write_bytes((tmp_path / "dir" / "3.dcm").read_bytes()[:300])
    serial = list(scan_instances(tmp_path))
    monkeypatch.setattr(read_module, "SCAN_CHUNK", 2)
    monkeypatch.setattr(read_module, "SCAN_AHEAD", 1)
    with ProcessPoolExecutor(2, mp_context=mp.get_context("fork")) as pool:
        parallel = list(scan_instances(tmp_path, pool=pool))
    assert len(serial) == 12 and sum(not hasattr(i, "series_key") for i in serial) >= 2
    assert parallel == serial
