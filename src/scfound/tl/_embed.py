"""``sf.tl.embed``: cell embeddings from a deep model into ``adata.obsm``."""

from __future__ import annotations

from typing import Any, Literal

from anndata import AnnData

from scfound._utils import record
from scfound.models import SpaFormer

from ._impute import _resolve_method
from ._spaformer import spaformer_for, training_summary


def embed(
    adata: AnnData,
    method: Literal["spaformer"] | None = None,
    *,
    layer: str | None = None,
    spatial_key: str = "spatial",
    group_key: str | None = None,
    batch_key: str | None = None,
    model: SpaFormer | None = None,
    key_added: str | None = None,
    max_epochs: int = 200,
    model_kwargs: dict[str, Any] | None = None,
    train_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    copy: bool = False,
) -> AnnData | None:
    """Embed every cell in the latent space of a deep model.

    The embedding can be used like a PCA: ``sc.pp.neighbors(adata, use_rep="X_spaformer")``.

    Parameters
    ----------
    adata
        Cells x genes with counts in ``layer`` (or ``.X``) and coordinates in
        ``obsm[spatial_key]``.
    method
        ``"spaformer"``; ``None`` picks SpaFormer when ``obsm[spatial_key]`` exists.
    layer, spatial_key, group_key, batch_key, model, max_epochs, model_kwargs, train_kwargs, seed
        As in :func:`scfound.tl.impute`.
    key_added
        Key in ``adata.obsm``; default ``"X_spaformer"``.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``. Writes ``adata.obsm[key_added]`` (cells x
    ``n_latent``) and ``adata.uns['scfound']['embed']``.
    """
    method = _resolve_method(adata, method, spatial_key)
    adata = adata.copy() if copy else adata
    key_added = key_added or f"X_{method}"
    model, small = spaformer_for(
        adata,
        model,
        layer=layer,
        spatial_key=spatial_key,
        group_key=group_key,
        batch_key=batch_key,
        max_epochs=max_epochs,
        model_kwargs=model_kwargs,
        train_kwargs=train_kwargs,
        seed=seed,
    )
    adata.obsm[key_added] = model.get_latent_representation(small)
    record(
        adata,
        "embed",
        {
            "method": method,
            "layer": layer,
            "key_added": key_added,
            "group_key": group_key,
            "max_epochs": max_epochs,
            "model": model._model_summary_string,
            **training_summary(model),
        },
    )
    return adata if copy else None
