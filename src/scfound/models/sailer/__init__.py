"""SAILER: invariant representation learning for scATAC-seq."""

from ._model import SAILER, SAILERTrainingPlan
from ._module import SAILERModule

__all__ = ["SAILER", "SAILERModule", "SAILERTrainingPlan"]
