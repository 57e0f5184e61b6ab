"""scvi-tools models, one folder per method."""

from .spaformer import SpaFormer, SpaFormerModule

__all__ = ["SpaFormer", "SpaFormerModule"]
