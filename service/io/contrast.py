"""Contrast family guess (T1, T1post, T2, FLAIR, other) from non-identifying acquisition tags.

Rules, first match wins:

1. The series description / protocol / sequence name (or fastMRI ``acquisition``) names it:
   ``FLAIR`` (T1-FLAIR counts as T1), ``T2`` (``T2*``/SWI/DWI are "other"), ``T1``/MPRAGE/SPGR.
   ``POST``, ``+C``, ``GAD``/``GD`` or a contrast agent tag turns T1 into T1post.
2. Otherwise timing: inversion time >= 1500 ms with echo time >= 60 ms is FLAIR; echo time
   >= 60 ms with repetition time >= 1500 ms is T2; echo time <= 30 ms with repetition time
   <= 1000 ms, or an inversion-recovery gradient echo with TI 300-1300 ms (MPRAGE), is T1 (T1post
   with a contrast agent).
3. Else "other".
"""

from __future__ import annotations

import re

from rankiq.service.io.types import ContrastFamily

_WORD = re.compile(r"[A-Z0-9*+]+")
_POST = re.compile(r"POST|\+C|C\+|GAD|\bGD\b|\+GD")
_T1_WORDS = ("T1", "MPRAGE", "MP-RAGE", "SPGR", "BRAVO", "TFE", "FSPGR", "VIBE", "MPR")
_OTHER_T2 = ("T2*", "T2STAR", "SWI", "DWI", "DTI", "ADC", "TRACE", "GRE_T2")


def _from_text(text: str) -> str | None:
    """Family named by a description, or ``None``."""
    t = text.upper()
    if not t.strip():
        return None
    words = _WORD.findall(t)
    if "FLAIR" in t:
        return "T1" if any(w.startswith("T1") for w in words) else "FLAIR"
    if any(o in t for o in _OTHER_T2):
        return "other"
    # "AXT2", "T2_TSE", "COR T2": a T2 token at a word start, not e.g. "ST20"
    if re.search(r"(^|[^A-Z0-9])(AX|SAG|COR)?T2(?![0-9])", t):
        return "T2"
    if re.search(r"(^|[^A-Z0-9])(AX|SAG|COR)?T1(?![0-9])", t) or any(
        w in words for w in _T1_WORDS[1:]
    ):
        return "T1"
    return None


def guess_contrast(
    description: str = "",
    *,
    echo_time_ms: float | None = None,
    repetition_time_ms: float | None = None,
    inversion_time_ms: float | None = None,
    scanning_sequence: str = "",
    contrast_agent: bool = False,
) -> ContrastFamily:
    """Guess the contrast family of a series.

    Args:
        description: series description, protocol and sequence names joined (any case).
        echo_time_ms, repetition_time_ms, inversion_time_ms: timings in ms, ``None`` if unknown.
        scanning_sequence: DICOM ScanningSequence (``"SE"``, ``"GR"``, ``"IR\\GR"``...).
        contrast_agent: a contrast agent tag is present (ContrastBolusAgent...).

    Returns:
        ``"T1"``, ``"T1post"``, ``"T2"``, ``"FLAIR"`` or ``"other"``.
    """
    post = contrast_agent or bool(_POST.search(description.upper()))
    family = _from_text(description)
    if family is None:
        te, tr, ti = echo_time_ms, repetition_time_ms, inversion_time_ms
        seq = scanning_sequence.upper()
        if ti is not None and ti >= 1500 and te is not None and te >= 60:
            family = "FLAIR"
        elif te is not None and tr is not None and te >= 60 and tr >= 1500:
            family = "T2"
        elif (te is not None and tr is not None and te <= 30 and tr <= 1000) or (
            ti is not None and 300 <= ti <= 1300 and "GR" in seq
        ):
            family = "T1"
        else:
            family = "other"
    if family == "T1" and post:
        return "T1post"
    return family  # type: ignore[return-value]
