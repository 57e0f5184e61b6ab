"""CellPLM model."""

from ._model import CellPLM
from ._module import CellPLMModule
from ._pretrained import export_authors_checkpoint

__all__ = ["CellPLM", "CellPLMModule", "export_authors_checkpoint"]
