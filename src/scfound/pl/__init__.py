"""Plotting: imputed genes in space, scores, annotations, training curves, multi-omics.

Multi-omics: a predicted modality against the measured one, and modality matching. Every
function draws with matplotlib, returns the :class:`~matplotlib.figure.Figure`, and takes
``show`` and ``save`` like scanpy's plotting functions.
"""

from ._annotation import annotation
from ._multiomics import matching, predicted_modality
from ._scores import gene_scores
from ._spatial import imputed_genes
from ._training import training_curves

__all__ = [
    "annotation",
    "gene_scores",
    "imputed_genes",
    "matching",
    "predicted_modality",
    "training_curves",
]
