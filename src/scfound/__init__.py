"""scfound: foundation models for single-cell and spatial omics, scvi-tools models, scanpy API."""

from importlib.metadata import PackageNotFoundError, version

from . import datasets, metrics, pl, pp, tl
from ._settings import settings
from .models import (
    SAILER,
    SAILERX,
    STAI,
    CellPLM,
    ExpressionTransformer,
    ScMoFormer,
    ScMoGNN,
    SpaFormer,
)

try:
    __version__ = version("scfound")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "SAILER",
    "SAILERX",
    "STAI",
    "CellPLM",
    "ExpressionTransformer",
    "ScMoFormer",
    "ScMoGNN",
    "SpaFormer",
    "datasets",
    "metrics",
    "pl",
    "pp",
    "settings",
    "tl",
]
