"""Evaluation metrics: one definition of each score used in benchmarks and tools."""

from ._clustering import clustering_scores
from ._imputation import imputation_scores, normalize_log1p, per_gene_scores

__all__ = ["clustering_scores", "imputation_scores", "normalize_log1p", "per_gene_scores"]
