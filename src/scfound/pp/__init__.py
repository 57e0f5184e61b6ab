"""Preprocessing: spatial tiles and graphs, hold-out masks, k-NN smoothing of a reference."""

from ._corpus import build_corpus
from ._mask import draw_holdout_mask, mask_entries
from ._smoothing import knn_smoothing_matrix
from ._spatial import spatial_graph, spatial_tiles

__all__ = [
    "build_corpus",
    "draw_holdout_mask",
    "knn_smoothing_matrix",
    "mask_entries",
    "spatial_graph",
    "spatial_tiles",
]
