"""Evaluation: exact retrieval metrics (PML AccuracyCalculator parity), blockwise kNN, k-means, evaluators."""

from jaxdml.eval.clustering import KMeansResult, kmeans
from jaxdml.eval.evaluators import EVALUATORS, AccuracyEvaluator, Evaluator, RetrievalEvaluator
from jaxdml.eval.retrieval import knn, retrieval_metrics

__all__ = ["EVALUATORS", "AccuracyEvaluator", "Evaluator", "KMeansResult", "RetrievalEvaluator", "kmeans", "knn",
           "retrieval_metrics"]
