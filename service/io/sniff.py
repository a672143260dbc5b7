"""Recognise an input's kind from its first bytes; a name's extension is never trusted."""

from __future__ import annotations

from typing import Literal

Kind = Literal["dicom", "hdf5", "zip"]

#: Bytes to read from the start of a file before calling :func:`sniff`.
SNIFF_BYTES = 1032

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")  # local file header; empty archive
# first tags of a DICOM data set written without the 128-byte preamble (little/big endian):
# group 0x0002 (file meta) or 0x0008 (identifying group), as pydicom's force-reading expects.
_BARE_DICOM_GROUPS = (b"\x02\x00", b"\x08\x00", b"\x00\x08")


def _looks_like_bare_dicom(head: bytes) -> bool:
    """A data set without preamble: first tag in group 2 or 8 followed by a VR or a length."""
    if len(head) < 8 or head[:2] not in _BARE_DICOM_GROUPS:
        return False
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():  # explicit VR
        return True
    # implicit VR little endian: 4-byte length of a small header element
    length = int.from_bytes(head[4:8], "little")
    return length < 1 << 16


def sniff(head: bytes) -> Kind | None:
    """Guess the kind of content from its first bytes (``SNIFF_BYTES`` are enough).

    Returns ``"dicom"`` (``DICM`` after the 128-byte preamble, or a bare data set starting with a
    group 0002/0008 tag), ``"hdf5"`` (the HDF5 signature at offset 0, 512 or 1024), ``"zip"``, or
    ``None`` for anything else.
    """
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(ZIP_SIGNATURES):
        return "zip"
    for offset in (0, 512, 1024):  # HDF5 superblock may follow a user block
        if head[offset : offset + 8] == HDF5_SIGNATURE:
            return "hdf5"
    if _looks_like_bare_dicom(head):
        return "dicom"
    return None
