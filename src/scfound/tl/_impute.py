"""``sf.tl.impute``: fill in missing or dropped-out expression."""

from __future__ import annotations

from typing import Any, Literal

from anndata import AnnData

from scfound._utils import record
from scfound.models import SpaFormer

from ._spaformer import spaformer_for, training_summary

METHODS = ("spaformer",)


def impute(
    adata: AnnData,
    method: Literal["spaformer"] | None = None,
    *,
    layer: str | None = None,
    spatial_key: str = "spatial",
    group_key: str | None = None,
    batch_key: str | None = None,
    model: SpaFormer | None = None,
    key_added: str | None = None,
    keep_observed: bool = False,
    max_epochs: int = 200,
    model_kwargs: dict[str, Any] | None = None,
    train_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    copy: bool = False,
) -> AnnData | None:
    """Impute expression with a deep model and write it into ``adata.layers``.

    With ``method="spaformer"`` (the default for data with spatial coordinates), a
    :class:`~scfound.SpaFormer` is trained on ``adata`` with its default settings (unless a trained
    ``model`` is given), and every cell is reconstructed in the context of its field of view.

    Parameters
    ----------
    adata
        Cells x genes with counts in ``layer`` (or ``.X``) and coordinates in
        ``obsm[spatial_key]``.
    method
        ``"spaformer"``; ``None`` picks SpaFormer when ``obsm[spatial_key]`` exists.
    layer
        Layer with the counts; ``None`` uses ``.X``.
    spatial_key
        Key of the coordinates in ``adata.obsm``.
    group_key
        Column of ``adata.obs`` with fields of view. ``None`` cuts the section into square tiles of
        about 500 cells (kept internally; ``adata.obs`` is not changed).
    batch_key
        Optional batch column of ``adata.obs``.
    model
        A trained :class:`~scfound.SpaFormer` to apply instead of training one; ``adata`` must
        hold the genes, layer and keys it was set up with.
    key_added
        Layer to write; default ``"spaformer_imputed"``.
    keep_observed
        Keep non-zero observed counts and impute zeros only; default replaces every entry by the
        model's reconstruction (denoised values). Either way the layer is on the count scale of
        the input (each cell keeps its library size), so it can replace the counts in scanpy.
    max_epochs
        Training epochs when no ``model`` is given.
    model_kwargs, train_kwargs
        Passed to :class:`~scfound.SpaFormer` and :meth:`~scfound.SpaFormer.train`.
    seed
        Random seed of training.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``. Writes

    * ``adata.layers[key_added]``: imputed expression, float32, cells x genes;
    * ``adata.uns['scfound']['impute']``: the parameters of the run and final training losses.
    """
    method = _resolve_method(adata, method, spatial_key)
    adata = adata.copy() if copy else adata
    key_added = key_added or f"{method}_imputed"
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
    imputed = model.get_imputed_expression(small, keep_observed=keep_observed)
    adata.layers[key_added] = imputed
    record(
        adata,
        "impute",
        {
            "method": method,
            "layer": layer,
            "key_added": key_added,
            "spatial_key": spatial_key,
            "group_key": group_key,
            "keep_observed": keep_observed,
            "max_epochs": max_epochs,
            "model": model._model_summary_string,
            **training_summary(model),
        },
    )
    return adata if copy else None


def _resolve_method(adata: AnnData, method: str | None, spatial_key: str) -> str:
    if method is None:
        if spatial_key in adata.obsm:
            return "spaformer"
        raise ValueError(
            f"no method given and adata.obsm[{spatial_key!r}] is missing: SpaFormer needs spatial "
            "coordinates; pass `spatial_key=` or `method=`."
        )
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}.")
    return method
