"""stAI: reference-based imputation and annotation of spatial transcriptomics."""

from ._model import ANNOTATION_WEIGHTS, IMPUTATION_WEIGHTS, STAI
from ._module import STAIModule

__all__ = ["ANNOTATION_WEIGHTS", "IMPUTATION_WEIGHTS", "STAI", "STAIModule"]
