"""Preprocessing: spatial tiles and graphs, hold-out masks for benchmarking."""

from ._mask import draw_holdout_mask, mask_entries
from ._spatial import spatial_graph, spatial_tiles

__all__ = ["draw_holdout_mask", "mask_entries", "spatial_graph", "spatial_tiles"]
