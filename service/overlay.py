"""Saliency maps as pictures and as portable arrays.

* :func:`overlay_png`: the slice (grey) with the saliency magnitude blended on top in a
  black-red-yellow ramp, as PNG bytes. For eyes, not for numbers.
* :func:`encode_array`: an array as little-endian float32 bytes in base64 with its shape and dtype,
  for clients that want the raw map (``numpy.frombuffer(base64.b64decode(d["data"]),
  "<f4").reshape(d["shape"])``).
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

DISPLAY_PERCENTILE = 99.5


def _unit(x: np.ndarray, percentile: float = DISPLAY_PERCENTILE) -> np.ndarray:
    """Scale a non-negative array to 0..1 by its ``percentile``-th percentile (clipped)."""
    top = float(np.percentile(x, percentile)) if x.size else 0.0
    if top <= 0:
        top = float(x.max()) if x.size else 0.0
    if top <= 0:
        return np.zeros_like(x, dtype=np.float32)
    return np.clip(x / top, 0.0, 1.0).astype(np.float32)


def saliency_magnitude(saliency: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` gradient -> ``(H, W)`` magnitude (root sum of squares over channels)."""
    return np.sqrt(np.sum(np.square(saliency.astype(np.float32)), axis=0))


def overlay_rgb(image: np.ndarray, saliency: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Blend the saliency magnitude over the image.

    Args:
        image: ``(H, W)`` real image (any scale; magnitude is displayed).
        saliency: ``(C, H, W)`` map on the same grid.
        alpha: opacity of the map where it is strongest.

    Returns:
        uint8 ``(H, W, 3)``.
    """
    grey = _unit(np.abs(image))
    t = _unit(saliency_magnitude(saliency))
    a = alpha * t  # float32, as every step below
    base = (1 - a) * grey
    out = np.empty((*t.shape, 3), np.uint8)
    # channel by channel (black-red-yellow ramp: heat_c = clip(3t - c, 0, 1)), written into
    # the uint8 picture: the same float32 steps as blending (H, W, 3) arrays, a third of the
    # memory traffic
    for c in range(3):
        v = base + a * np.clip(3 * t - c, 0, 1)
        np.clip(v, 0, 1, out=v)
        v *= 255
        v += 0.5
        out[..., c] = v  # truncation, as astype(np.uint8)
    return out


def overlay_png(image: np.ndarray, saliency: np.ndarray) -> bytes:
    """PNG bytes of :func:`overlay_rgb`."""
    return rgb_png(overlay_rgb(image, saliency))


def rgb_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of a uint8 ``(H, W, 3)`` image."""
    buf = io.BytesIO()
    # compress_level 1: ~as small as the default on MR images and several times faster to
    # write (optimize=True took 8 ms per 160-px thumbnail, most of a QA report's time)
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_array(x: np.ndarray, dtype: str = "float32") -> dict[str, object]:
    """``{"data": base64, "shape": [...], "dtype": "float32", "byte_order": "little"}``.

    float32, not float16: a no-reference saliency map is a density (it sums to the slice's
    score over ~65,000 pixels), ~1e-6..1e-4 a pixel, below float16's smallest normal number
    (6.1e-5); as float16 subnormals its pixels kept 0.3-20 % precision (less on larger
    matrices) and the conversion took ~5 ms a 256x256 slice (NumPy's slow path)."""
    arr = np.ascontiguousarray(x, dtype=np.dtype(dtype).newbyteorder("<"))
    return {"data": base64.b64encode(arr.tobytes()).decode("ascii"), "shape": list(arr.shape),
            "dtype": dtype, "byte_order": "little"}


def decode_array(d: dict[str, object]) -> np.ndarray:
    """Inverse of :func:`encode_array`."""
    dt = np.dtype(str(d["dtype"])).newbyteorder("<")
    raw = base64.b64decode(str(d["data"]))
    shape = d["shape"]
    if not isinstance(shape, list | tuple):
        raise ValueError(f"encoded array: shape must be a list, not {type(shape).__name__}")
    return np.frombuffer(raw, dtype=dt).reshape([int(s) for s in shape])
