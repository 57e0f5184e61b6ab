"""scvi-tools models, one folder per method."""

from .cellplm import CellPLM
from .sailer import SAILER
from .scmognn import ScMoGNN
from .spaformer import SpaFormer, SpaFormerModule
from .stai import STAI

__all__ = ["SAILER", "STAI", "CellPLM", "ScMoGNN", "SpaFormer", "SpaFormerModule"]
