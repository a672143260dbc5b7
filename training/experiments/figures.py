"""Figures of the experiments (matplotlib, Agg backend, PNG): panels like the paper's Figures 2
and 4 (input, output per loss, reference; error maps; IQ-Net saliency of each output) and the
training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def panel(out: Path, outputs: dict[str, np.ndarray], reference: np.ndarray, scorer: Any, *,
          title: str, slices: int = 2, error_gain: float = 5.0) -> Path:
    """For the first ``slices`` test slices, three rows each: magnitudes (input, outputs per
    loss, reference) with MSE / SSIM / IQ-Net score, ``|output - reference|`` magnified
    ``error_gain`` times, and the IQ-Net saliency ``|d score / d input|`` of each image."""
    from rankiq.training.ssim import mse, ssim_batch

    plt = _plt()
    names = list(outputs)
    n = min(slices, len(reference))
    cols = len(names) + 1
    fig, axes = plt.subplots(3 * n, cols, figsize=(2.2 * cols, 2.3 * 3 * n), squeeze=False)
    for s in range(n):
        ref = reference[s:s + 1]
        for j, name in enumerate(names):
            img = outputs[name][s:s + 1]
            score = float(scorer.score(img, ref)[0])
            sal = scorer.saliency(img, ref)[0]
            a = axes[3 * s, j]
            a.imshow(np.abs(img[0]), cmap="gray", vmin=0, vmax=1)
            a.set_title(f"{name}\nMSE {float(mse(img, ref)[0]):.2g} SSIM "
                        f"{float(ssim_batch(img, ref)[0]):.3f}\nscore {score:.3g}", fontsize=7)
            axes[3 * s + 1, j].imshow(np.abs(np.abs(img[0]) - np.abs(ref[0])) * error_gain,
                                      cmap="gray", vmin=0, vmax=1)
            axes[3 * s + 2, j].imshow(sal, cmap="inferno")
        axes[3 * s, cols - 1].imshow(np.abs(ref[0]), cmap="gray", vmin=0, vmax=1)
        axes[3 * s, cols - 1].set_title("reference", fontsize=7)
        axes[3 * s + 1, 0].set_ylabel(f"|error| x{error_gain:g}", fontsize=7)
        axes[3 * s + 2, 0].set_ylabel("IQ-Net saliency", fontsize=7)
    for a in axes.ravel():
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def curves(out: Path, histories: dict[str, list[dict[str, Any]]]) -> Path:
    """Training loss (relative to its first epoch) and validation MSE, SSIM and IQ-Net score
    per epoch, one line per loss."""
    plt = _plt()
    keys = [("train_loss", "train loss / epoch 1"), ("val_mse", "val MSE"),
            ("val_ssim", "val SSIM"), ("val_iqnet", "val IQ-Net score")]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8))
    for name, hist in histories.items():
        ep = [h["epoch"] for h in hist]
        for a, (k, label) in zip(axes, keys, strict=True):
            v = np.asarray([h[k] for h in hist], dtype=float)
            if k == "train_loss" and len(v) and v[0] != 0:
                v = v / v[0]
            a.plot(ep, v, marker=".", label=name)
            a.set_title(label, fontsize=8)
            a.set_xlabel("epoch", fontsize=8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
