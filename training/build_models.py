"""Build the shipped model directories.

``build_interim(models_dir)`` writes the *untrained* interim models ``iqnet-ref`` and
``iqnet-noref`` (faithful IQ-Net initial weights, seeded; a hand-set monotone classifier) so the
service can be built and tested before training finishes. They say so in metadata
(``"trained": false``) and in their model cards. The trained models replace them through
``rankiq export RUN --out models/NAME/`` (``make models``).

Run: ``.venv/bin/python -m rankiq.training.build_models --interim [--out models] [--grid 396]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, cast

import torch
from rankiq.training.export import export_model
from rankiq.training.export.writer import provisional_thresholds
from rankiq.training.models import IQNet, RankClassifier

INTERIM_VERSION = "0.1.0-untrained"


def monotone_classifier(scale: float) -> RankClassifier:
    """An untrained but sensible classifier: lower score wins, 'similar' peaks at equal scores.

    One hidden unit per branch: ``f(d) = 4 sigmoid(-4 d / scale)`` and
    ``g(d) = -4 sigmoid(4 d / scale - 2) + 1.7``; ``scale`` is a typical score difference.
    """
    clf = RankClassifier()
    with torch.no_grad():
        for p in clf.parameters():
            p.zero_()
        f_in, f_out = (cast(torch.nn.Linear, clf.f[i]) for i in (0, 2))
        g_in, g_out = (cast(torch.nn.Linear, clf.g[i]) for i in (0, 2))
        f_in.weight[0, 0] = -4.0 / scale
        f_out.weight[0, 0] = 4.0
        g_in.weight[0, 0] = 4.0 / scale
        g_in.bias[0] = -2.0
        g_out.weight[0, 0] = -4.0
        g_out.bias[0] = 1.7
    return clf.eval()


def build_interim(models_dir: str | Path = "models", *, grid: tuple[int, int] = (396, 396),
                  seed: int = 0) -> dict[str, dict[str, Any]]:
    """Export ``iqnet-ref`` and ``iqnet-noref`` from seeded untrained IQ-Nets; returns metadata."""
    out: dict[str, dict[str, Any]] = {}
    for name, mode in (("iqnet-ref", "reference"), ("iqnet-noref", "no-reference")):
        torch.manual_seed(seed)
        net = IQNet("magnitude").eval()
        scale = provisional_thresholds(net, mode, "magnitude", grid, seed)["other"]
        extra = {"trained": False,
                 "training": {"note": "untrained interim model: IQ-Net initial weights",
                              "seed": seed, "data_fingerprint": None},
                 "classifier_note": "hand-set monotone classifier (lower score wins), not trained"}
        out[name] = export_model(net, monotone_classifier(scale), Path(models_dir) / name,
                                 name=name, version=INTERIM_VERSION, mode=mode,
                                 input_kind="magnitude", grid=grid, extra_metadata=extra,
                                 parity_seed=seed)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interim", action="store_true", help="build the untrained interim models")
    ap.add_argument("--out", default="models", help="models directory (default models)")
    ap.add_argument("--grid", type=int, default=396, help="square grid (default 396)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not args.interim:
        ap.error("only --interim is implemented; trained models come from `rankiq export`")
    for name, meta in build_interim(args.out, grid=(args.grid, args.grid), seed=args.seed).items():
        print(f"{name}: {meta['version']} parity {meta['parity']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
