"""SAILERX: paired RNA + ATAC integration with structural similarity, and hybrid training."""

from ._model import SAILERX
from ._module import SAILERXModule

__all__ = ["SAILERX", "SAILERXModule"]
