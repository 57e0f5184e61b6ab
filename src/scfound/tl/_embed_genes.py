"""``sf.tl.embed_genes``: gene embeddings from a deep model into ``adata.varm``."""

from __future__ import annotations

from typing import Any

import numpy as np
from anndata import AnnData
from mudata import MuData

from scfound._docs import doc_adata, doc_params, doc_returns, doc_shared
from scfound._keys import gene_embedding_key

from ._methods import Result
from ._run import run


@doc_params(adata=doc_adata, shared=doc_shared, returns=doc_returns)
def embed_genes(  # noqa: D417 - shared parameters are filled in by doc_params
    adata: AnnData | MuData,
    method: str = "exprformer",
    *,
    key_added: str | None = None,
    layer: str | None = None,
    spatial_key: str = "spatial",
    group_key: str | None = None,
    model: Any = None,
    max_epochs: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    train_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    mod: str | None = None,
    return_model: bool = False,
    copy: bool = False,
    sample_key: str | None = None,
    **options: Any,
) -> Any:
    """Embed every gene of ``adata`` with a deep model (one row per gene in ``varm``).

    The embedding can be clustered or fed to a classifier of gene properties, e.g.
    :func:`scfound.metrics.gene_pair_auc`.

    Parameters
    ----------
    {adata}
    method
        A method that embeds genes (``"exprformer"``: the gene-token table of a pre-trained
        :class:`~scfound.ExpressionTransformer`; genes it does not know get NaN rows and a
        warning with their count).
    key_added
        Key in ``adata.varm``; default ``"X_<method>"``.
    {shared}

    Returns
    -------
    {returns} Writes ``adata.varm[key_added]`` (genes x dimensions) and
    ``adata.uns['scfound']['embed_genes'][key_added]``.
    """
    key_added = key_added or gene_embedding_key(method)
    return run("embed_genes", locals(), common=(), write=_write, places=lambda key: [("varm", key)])


def _write(adata: AnnData, result: Result, key: str) -> None:
    adata.varm[key] = np.asarray(result.values, dtype=np.float32)
