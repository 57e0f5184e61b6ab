"""The method adapters behind :mod:`scfound.tl`, one module per method, in one registry.

Adding a method: write ``<method>.py`` with a :class:`MethodAdapter` subclass that defines the
verbs it supports, and add it to :data:`ADAPTERS`. The verbs need no change.
"""

from __future__ import annotations

from ._base import VERBS, Inputs, MethodAdapter, Result
from .cellplm import CellPLMAdapter
from .exprformer import ExpressionTransformerAdapter
from .sailer import SAILERAdapter
from .sailerx import SAILERXAdapter
from .scmoformer import ScMoFormerAdapter
from .scmognn import ScMoGNNAdapter
from .spaformer import SpaFormerAdapter
from .stai import STAIAdapter

#: every method of the ``tl`` verbs by its ``method=`` name
ADAPTERS: dict[str, type[MethodAdapter]] = {
    adapter.name: adapter
    for adapter in (
        SpaFormerAdapter,
        CellPLMAdapter,
        STAIAdapter,
        ScMoGNNAdapter,
        SAILERAdapter,
        SAILERXAdapter,
        ScMoFormerAdapter,
        ExpressionTransformerAdapter,
    )
}


def methods_for(verb: str) -> list[str]:
    """The methods that support ``verb``."""
    return [name for name, adapter in ADAPTERS.items() if verb in adapter.verbs()]


def get_adapter(method: str, verb: str) -> MethodAdapter:
    """The adapter of ``method``, or a ``ValueError`` when it is unknown or lacks ``verb``."""
    if not isinstance(method, str) or method not in ADAPTERS:
        raise ValueError(
            f"method={method!r} is not a method of tl.{verb}; methods that support it: "
            f"{methods_for(verb)}."
        )
    adapter = ADAPTERS[method]
    if verb not in adapter.verbs():
        raise ValueError(
            f"method {method!r} does not support tl.{verb}; methods that do: {methods_for(verb)}."
        )
    return adapter()


__all__ = ["ADAPTERS", "VERBS", "Inputs", "MethodAdapter", "Result", "get_adapter", "methods_for"]
