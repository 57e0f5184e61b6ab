"""ScMoGNN: multi-omics modality prediction with a graph network on the cell-feature graph."""

from ._model import ScMoGNN
from ._module import ScMoGNNModule, normalize_counts

__all__ = ["ScMoGNN", "ScMoGNNModule", "normalize_counts"]
