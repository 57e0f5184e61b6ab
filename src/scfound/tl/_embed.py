"""``sf.tl.embed``: cell embeddings from a deep model into ``adata.obsm``."""

from __future__ import annotations

from typing import Any

import numpy as np
from anndata import AnnData
from mudata import MuData

from scfound._keys import embedding_key

from ._methods import Result
from ._run import modality, run

VERB = "embed"


def embed(
    adata: AnnData | MuData,
    method: str | None = None,
    *,
    layer: str | None = None,
    spatial_key: str = "spatial",
    group_key: str | None = None,
    model: Any = None,
    key_added: str | None = None,
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
    adata
        Cells x genes with raw counts in ``layer`` (or ``.X``); a MuData reads modality ``mod``.
    method
        ``"spaformer"`` or ``"cellplm"``; ``None`` picks SpaFormer when ``obsm[spatial_key]``
        exists, CellPLM otherwise.
    layer, spatial_key, group_key, model, max_epochs, model_kwargs, train_kwargs, seed, mod
        As in :func:`scfound.tl.impute`.
    key_added
        Key in ``adata.obsm``; default ``"X_<method>"``.
    return_model
        Also return the model, so that another verb can reuse it (``model=``).
    copy
        Return a modified copy instead of writing into ``adata``.
    sample_key
        Deprecated name of ``group_key``.
    **options
        Options of the method (SpaFormer: ``batch_key``; CellPLM: ``gene_key``,
        ``fine_tune``); an option the method does not know is an error.

    Returns
    -------
    ``None``, the copy, the model (``return_model``) or ``(copy, model)``. Writes
    ``adata.obsm[key_added]`` (cells x latent dimensions) and
    ``adata.uns['scfound']['embed'][key_added]``.
    """
    if method is None:
        method = "spaformer" if spatial_key in modality(adata, mod).obsm else "cellplm"
    key_added = key_added or embedding_key(method)
    return run(
        VERB,
        adata,
        method,
        common={},
        options=options,
        write=_write,
        key_added=key_added,
        mod=mod,
        copy=copy,
        return_model=return_model,
        group_key=group_key,
        sample_key=sample_key,
        layer=layer,
        spatial_key=spatial_key,
        model=model,
        max_epochs=max_epochs,
        model_kwargs=model_kwargs,
        train_kwargs=train_kwargs,
        seed=seed,
    )


def _write(adata: AnnData, result: Result, key: str) -> None:
    adata.obsm[key] = np.asarray(result.values, dtype=np.float32)
