"""ExpressionTransformer model."""

from ._model import ExpressionTransformer
from ._module import ExpressionTransformerModule

__all__ = ["ExpressionTransformer", "ExpressionTransformerModule"]
