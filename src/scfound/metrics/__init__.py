"""Evaluation metrics: one definition of each score used in benchmarks and tools."""

from ._annotation import annotation_scores, per_class_scores
from ._clustering import clustering_scores, graph_clustering_scores
from ._embedding import confounder_information, embedding_scores, neighbor_batch_composition
from ._gene_pairs import gene_pair_auc
from ._imputation import heldout_gene_scores, imputation_scores, normalize_log1p, per_gene_scores
from ._multiomics import matching_score, modality_prediction_scores

__all__ = [
    "annotation_scores",
    "clustering_scores",
    "confounder_information",
    "embedding_scores",
    "gene_pair_auc",
    "graph_clustering_scores",
    "heldout_gene_scores",
    "imputation_scores",
    "matching_score",
    "modality_prediction_scores",
    "neighbor_batch_composition",
    "normalize_log1p",
    "per_class_scores",
    "per_gene_scores",
]
