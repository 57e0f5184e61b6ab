"""One-call tools: train (or reuse) a model and write its results into the AnnData.

One verb per module; each resolves the method, hands the work to that method's adapter
(:mod:`scfound.tl._methods`), writes the result to the place fixed for the verb and records the
run in ``uns["scfound"][verb][key_added]``.
"""

from ._annotate import annotate
from ._denoise import denoise
from ._embed import embed
from ._embed_genes import embed_genes
from ._impute import impute
from ._imputed_anndata import imputed_anndata
from ._match_modalities import match_modalities
from ._predict_modality import predict_modality

__all__ = [
    "annotate",
    "denoise",
    "embed",
    "embed_genes",
    "impute",
    "imputed_anndata",
    "match_modalities",
    "predict_modality",
]
