"""Plotting: maps of imputed genes in space, per-gene scores, annotations and training curves.

Every function draws with matplotlib, returns the :class:`~matplotlib.figure.Figure`, and takes
``show`` and ``save`` like scanpy's plotting functions.
"""

from ._annotation import annotation
from ._scores import gene_scores
from ._spatial import imputed_genes
from ._training import training_curves

__all__ = ["annotation", "gene_scores", "imputed_genes", "training_curves"]
