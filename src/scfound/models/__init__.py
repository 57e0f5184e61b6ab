"""scvi-tools models, one folder per method."""

from .cellplm import CellPLM
from .spaformer import SpaFormer, SpaFormerModule
from .stai import STAI

__all__ = ["STAI", "CellPLM", "SpaFormer", "SpaFormerModule"]
