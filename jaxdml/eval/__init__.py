"""Evaluation: exact retrieval metrics (PML AccuracyCalculator parity), blockwise kNN, k-means."""

from jaxdml.eval.clustering import KMeansResult, kmeans
from jaxdml.eval.retrieval import knn, retrieval_metrics

__all__ = ["KMeansResult", "kmeans", "knn", "retrieval_metrics"]
