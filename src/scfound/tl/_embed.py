"""``sf.tl.embed``: cell embeddings from a deep model into ``adata.obsm``."""

from __future__ import annotations

from typing import Any

import numpy as np
from anndata import AnnData
from mudata import MuData

from scfound._docs import doc_adata, doc_params, doc_returns, doc_shared
from scfound._keys import embedding_key

from ._methods import Result
from ._run import modality, run


@doc_params(adata=doc_adata, shared=doc_shared, returns=doc_returns)
def embed(  # noqa: D417 - shared parameters are filled in by doc_params
    adata: AnnData | MuData,
    method: str | None = None,
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
    """Embed every cell in the latent space of a deep model.

    The embedding can be used like a PCA: ``sc.pp.neighbors(adata, use_rep="X_spaformer")``.

    Parameters
    ----------
    {adata}
    method
        ``"spaformer"``, ``"cellplm"``, ``"sailer"`` or ``"scmognn"``; ``None`` picks SpaFormer
        when ``obsm[spatial_key]`` exists, CellPLM otherwise. ``"scmognn"`` embeds the paired
        modalities of a MuData jointly (without ``mod=``) and writes to the MuData's own
        ``obsm``; its options ``source``, ``target`` (modality names, default RNA and the other
        one), ``labels_key`` (cell types in ``mdata.obs``, used when given) and
        ``source_kind``/``target_kind``.
    key_added
        Key in ``adata.obsm``; default ``"X_<method>"``.
    {shared}

    Returns
    -------
    {returns} Writes ``adata.obsm[key_added]`` (cells x latent dimensions) and
    ``adata.uns['scfound']['embed'][key_added]``.
    """
    if method is None:
        method = "spaformer" if spatial_key in modality(adata, mod).obsm else "cellplm"
    key_added = key_added or embedding_key(method)
    return run("embed", locals(), common=(), write=_write, places=lambda key: [("obsm", key)])


def _write(adata: AnnData, result: Result, key: str) -> None:
    adata.obsm[key] = np.asarray(result.values, dtype=np.float32)
