"""scvi-tools models, one folder per method."""

from .cellplm import CellPLM
from .exprformer import ExpressionTransformer
from .sailer import SAILER
from .sailerx import SAILERX
from .scmoformer import ScMoFormer
from .scmognn import ScMoGNN
from .spaformer import SpaFormer, SpaFormerModule
from .stai import STAI

__all__ = [
    "SAILER",
    "SAILERX",
    "STAI",
    "CellPLM",
    "ExpressionTransformer",
    "ScMoFormer",
    "ScMoGNN",
    "SpaFormer",
    "SpaFormerModule",
]
