"""One-call tools: train (or reuse) a model and write its results into the AnnData."""

from ._cellplm_tools import annotate, denoise
from ._embed import embed
from ._impute import impute
from ._stai import imputed_anndata

__all__ = ["annotate", "denoise", "embed", "impute", "imputed_anndata"]
