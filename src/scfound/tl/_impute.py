"""``sf.tl.impute``: fill in missing or dropped-out expression."""

from __future__ import annotations

from typing import Any, Literal

from anndata import AnnData

from scfound._utils import check_scale, record
from scfound.models import STAI, CellPLM, SpaFormer

from ._spaformer import spaformer_for
from ._utils import training_summary

METHODS = ("spaformer", "cellplm", "stai")


def impute(
    adata: AnnData,
    method: Literal["spaformer", "cellplm", "stai"] | None = None,
    *,
    reference: AnnData | None = None,
    genes: list[str] | None = None,
    layer: str | None = None,
    reference_layer: str | None = None,
    spatial_key: str = "spatial",
    group_key: str | None = None,
    batch_key: str | None = None,
    reference_sample_key: str | None = None,
    gene_key: str | None = None,
    model: SpaFormer | CellPLM | STAI | str | None = None,
    key_added: str | None = None,
    keep_observed: bool = False,
    scale: Literal["log1p", "counts"] = "log1p",
    max_epochs: int = 200,
    model_kwargs: dict[str, Any] | None = None,
    train_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    copy: bool = False,
) -> AnnData | None:
    """Impute expression with a deep model and write it into ``adata``.

    With ``method="spaformer"`` (the default for data with spatial coordinates), a
    :class:`~scfound.SpaFormer` is trained on ``adata`` with its default settings (unless a trained
    ``model`` is given), and every cell is reconstructed in the context of its field of view.

    With ``method="cellplm"`` (the default when a ``reference`` is given), genes that a spatial
    panel lacks are imputed from a scRNA-seq ``reference`` of the same tissue: both are joined in
    one corpus (each scored only on the genes it measured), a :class:`~scfound.CellPLM` is
    fine-tuned on it (or trained from scratch when ``model`` is None), and the spatial cells'
    decoded values at the reference-only genes are written to ``obsm[key_added]``.

    With ``method="stai"``, an :class:`~scfound.STAI` is trained on ``adata`` and the
    ``reference`` (their shared genes, matched by name), and each spatial cell gets the
    softmax-weighted mean of its nearest reference cells in the joint latent space, averaged over
    the gene-fold submodels; the result goes to ``obsm[key_added]`` as for CellPLM.

    Parameters
    ----------
    adata
        Cells x genes with counts in ``layer`` (or ``.X``) and coordinates in
        ``obsm[spatial_key]``.
    method
        ``"spaformer"``, ``"cellplm"`` or ``"stai"``; ``None`` picks CellPLM when a
        ``reference`` is given, SpaFormer when ``obsm[spatial_key]`` exists.
    reference
        CellPLM, stAI: scRNA-seq AnnData with raw counts that measures the genes to impute.
    genes
        CellPLM, stAI: genes to impute (default every reference gene ``adata`` lacks).
    layer, reference_layer
        Layers with the counts of ``adata`` and ``reference``; ``None`` uses ``.X``.
    spatial_key
        Key of the coordinates in ``adata.obsm``.
    group_key
        Column of ``adata.obs`` with fields of view (for CellPLM: the samples; for stAI: the
        slices, whose neighbour graphs are kept apart). ``None`` cuts
        the section into square tiles of about 500 cells for SpaFormer (kept internally;
        ``adata.obs`` is not changed) and makes it one sample for CellPLM.
    batch_key
        Optional batch column of ``adata.obs``.
    reference_sample_key
        CellPLM: column of ``reference.obs`` with its samples.
    gene_key
        CellPLM: column of ``var`` (of both objects) with gene identifiers to match on.
    model
        A trained :class:`~scfound.SpaFormer` to apply instead of training one (``adata`` must
        hold the genes, layer and keys it was set up with); for CellPLM a pre-trained
        :class:`~scfound.CellPLM` or the prefix of an authors' checkpoint to fine-tune; for stAI
        a :class:`~scfound.STAI` trained on ``adata``'s cells.
    key_added
        Layer (SpaFormer) or ``obsm`` key (CellPLM, stAI) to write; default
        ``"<method>_imputed"``.
    keep_observed
        Keep non-zero observed counts and impute zeros only; default replaces every entry by the
        model's reconstruction (denoised values). Either way the layer is on the count scale of
        the input (each cell keeps its library size), so it can replace the counts in scanpy.
    scale
        CellPLM, stAI: ``"log1p"`` writes log-normalised values (library 1e4, ``log1p``; stAI's
        output); ``"counts"`` writes expected counts at each spatial cell's own depth (its total
        over the genes it shares with the reference), which follow the cell size and detection
        that the measured counts carry.
    max_epochs
        Training epochs when no ``model`` is given.
    model_kwargs, train_kwargs
        Passed to the model class and its ``train`` method.
    seed
        Random seed of training.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``. Writes

    * SpaFormer: ``adata.layers[key_added]``, imputed expression, float32, cells x genes;
    * CellPLM, stAI: ``adata.obsm[key_added]``, a DataFrame (cells x imputed genes) on the
      ``scale`` asked for; :func:`scfound.tl.imputed_anndata` turns it into an AnnData for
      scanpy and squidpy plots;
    * ``adata.uns['scfound']['impute']``: the parameters of the run and final training losses.
    """
    if method is None and reference is not None:
        method = "cellplm"
    method = _resolve_method(adata, method, spatial_key)
    adata = adata.copy() if copy else adata
    key_added = key_added or f"{method}_imputed"
    if method in ("stai", "cellplm"):
        check_scale(scale)
        if reference is None:
            raise ValueError(
                f"method={method!r} imputes genes from a `reference`; pass reference=. (To "
                "denoise the measured genes use scfound.tl.denoise.)"
            )
        if method == "stai":
            from ._stai import check_reference_genes, stai_for

            check_reference_genes(reference, genes)
            fitted = stai_for(
                adata,
                reference,
                model,
                layer=layer,
                reference_layer=reference_layer,
                spatial_key=spatial_key,
                sample_key=group_key,
                labels_key=None,
                max_epochs=max_epochs,
                model_kwargs=model_kwargs,
                train_kwargs=train_kwargs,
                seed=seed,
            )
            adata.obsm[key_added] = fitted.get_imputed_expression(genes, scale=scale)
        else:
            from ._cellplm_tools import impute_cellplm

            fitted = impute_cellplm(
                adata,
                reference,
                genes=genes,
                key_added=key_added,
                layer=layer,
                reference_layer=reference_layer,
                sample_key=group_key,
                reference_sample_key=reference_sample_key,
                spatial_key=spatial_key if spatial_key in adata.obsm else None,
                gene_key=gene_key,
                scale=scale,
                model=model,
                max_epochs=max_epochs,
                model_kwargs=model_kwargs,
                train_kwargs=train_kwargs,
                seed=seed,
            )
        record(
            adata,
            "impute",
            {
                "method": method,
                "key_added": key_added,
                "scale": scale,
                "n_genes": adata.obsm[key_added].shape[1],
                "max_epochs": max_epochs,
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
