"""scvi-tools models, one folder per method."""

from .cellplm import CellPLM
from .spaformer import SpaFormer, SpaFormerModule

__all__ = ["CellPLM", "SpaFormer", "SpaFormerModule"]
