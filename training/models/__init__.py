"""Scoring networks and the rank classifier (torch). Import needs the ``train`` extra."""

from rankiq.training.models.classifier import CLASSES, RankClassifier
from rankiq.training.models.iqnet import IQNet, count_parameters


def __getattr__(name: str):
    # EfficientNetScorer imports efficientnet_pytorch: only on first use
    if name == "EfficientNetScorer":
        from rankiq.training.models.efficientnet import EfficientNetScorer

        return EfficientNetScorer
    raise AttributeError(name)


__all__ = ["CLASSES", "EfficientNetScorer", "IQNet", "RankClassifier", "count_parameters"]
