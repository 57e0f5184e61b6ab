"""SpaFormer model."""

from ._model import SpaFormer
from ._module import SpaFormerModule

__all__ = ["SpaFormer", "SpaFormerModule"]
