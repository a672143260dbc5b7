"""Scoring networks and the rank classifier (torch). Import needs the ``train`` extra."""

from training.models.classifier import CLASSES, RankClassifier
from training.models.iqnet import IQNet, count_parameters

__all__ = ["CLASSES", "IQNet", "RankClassifier", "count_parameters"]
