"""ScMoFormer: protein prediction with a graph transformer over cells, genes and proteins."""

from ._model import ScMoFormer
from ._module import GPSLayer, ScMoFormerModule

__all__ = ["GPSLayer", "ScMoFormer", "ScMoFormerModule"]
