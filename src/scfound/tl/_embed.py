"""``sf.tl.embed``: cell embeddings from a deep model into ``adata.obsm``."""

from __future__ import annotations

from typing import Any, Literal

from anndata import AnnData

from scfound._utils import record
from scfound.models import CellPLM, SpaFormer

from ._cellplm_tools import embed_cellplm
from ._impute import _resolve_method
from ._spaformer import spaformer_for
from ._utils import training_summary


def embed(
    adata: AnnData,
    method: Literal["spaformer", "cellplm"] | None = None,
    *,
    layer: str | None = None,
    spatial_key: str = "spatial",
    group_key: str | None = None,
    batch_key: str | None = None,
    sample_key: str | None = None,
    gene_key: str | None = None,
    model: SpaFormer | CellPLM | str | None = None,
    fine_tune: bool = False,
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
        ``"spaformer"`` or ``"cellplm"``; ``None`` picks SpaFormer when ``obsm[spatial_key]``
        exists, CellPLM otherwise.
    layer, spatial_key, group_key, batch_key, max_epochs, model_kwargs, train_kwargs, seed
        As in :func:`scfound.tl.impute`.
    sample_key
        CellPLM: column of ``adata.obs`` with tissue samples (each sample is one sentence);
        ``None``: all cells form one sample.
    gene_key
        CellPLM: column of ``adata.var`` with the model's gene identifiers.
    model
        SpaFormer: a trained model. CellPLM: a trained :class:`~scfound.CellPLM` (zero-shot), the
        prefix of a checkpoint in the authors' layout, or ``None`` to train a small CellPLM on
        ``adata``.
    fine_tune
        CellPLM: train a given model further on ``adata`` for ``max_epochs`` before embedding.
    key_added
        Key in ``adata.obsm``; default ``"X_<method>"``.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``. Writes ``adata.obsm[key_added]`` (cells x
    ``n_latent``) and ``adata.uns['scfound']['embed']``.
    """
    if method is None and spatial_key not in adata.obsm:
        method = "cellplm"
    method = _resolve_method(adata, method, spatial_key)
    adata = adata.copy() if copy else adata
    key_added = key_added or f"X_{method}"
    if method == "cellplm":
        fitted = embed_cellplm(
            adata,
            key_added,
            layer=layer,
            sample_key=sample_key,
            spatial_key=spatial_key if spatial_key in adata.obsm else None,
            gene_key=gene_key,
            model=model,
            max_epochs=max_epochs,
            model_kwargs=model_kwargs,
            train_kwargs=train_kwargs,
            seed=seed,
            fine_tune=fine_tune,
        )
        record(
            adata,
            "embed",
            {
                "method": method,
                "layer": layer,
                "key_added": key_added,
                "sample_key": sample_key,
                "model": fitted._model_summary_string,
                **training_summary(fitted),
            },
        )
        return adata if copy else None
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
