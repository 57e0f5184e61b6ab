"""stAI behind the ``tl`` functions: impute unmeasured genes and annotate spatial cells."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from scfound._utils import get_matrix, get_obs_column, get_spatial
from scfound.models import STAI

#: columns of the minimal AnnData objects handed to the model
LABELS, SAMPLE = "labels", "sample"


def _minimal(
    adata: AnnData,
    layer: str | None,
    *,
    spatial_key: str | None = None,
    sample_key: str | None = None,
    labels_key: str | None = None,
) -> AnnData:
    """A new AnnData with the values, and only the keys stAI reads, so ``adata`` stays as it is."""
    obs = pd.DataFrame(index=adata.obs_names.copy())
    if sample_key is not None:
        obs[SAMPLE] = pd.Categorical(get_obs_column(adata, sample_key))
    if labels_key is not None:
        obs[LABELS] = pd.Categorical(get_obs_column(adata, labels_key).astype(str))
    obsm = {"spatial": get_spatial(adata, spatial_key)} if spatial_key is not None else {}
    return AnnData(
        get_matrix(adata, layer), obs=obs, var=pd.DataFrame(index=adata.var_names), obsm=obsm
    )


def check_reference_genes(reference: AnnData, genes: list[str] | None) -> None:
    """Raise before any training when requested genes are missing from the reference."""
    if genes is None:
        return
    absent = [g for g in genes if g not in set(reference.var_names)]
    if absent:
        raise ValueError(
            f"{len(absent)} requested gene(s) are not in the reference: {absent[:10]}."
        )


def stai_for(
    adata: AnnData,
    reference: AnnData,
    model: STAI | None,
    *,
    layer: str | None,
    reference_layer: str | None,
    spatial_key: str,
    sample_key: str | None,
    labels_key: str | None,
    max_epochs: int | None,
    model_kwargs: dict[str, Any] | None,
    train_kwargs: dict[str, Any] | None,
    seed: int,
) -> STAI:
    """A trained :class:`~scfound.STAI` for ``adata`` and ``reference``: ``model`` or a new one.

    A new model gets the model's default loss weights (the authors' imputation configuration) for
    both tasks. Their annotation configuration (classifier 10, imputation 2, gene consistency 1,
    class weights ``n_c ** -2``; ``model_kwargs={"weights": ANNOTATION_WEIGHTS,
    "class_weight_power": 2}``) annotated the osmFISH halves worse (accuracy 0.30-0.44 against
    0.63-0.65 with the defaults, 31 cell types): a classifier weight of 10 lets the labels of the
    reference dominate its encoder, at the expense of the alignment the spatial cells rely on.
    ``seed`` fixes the initial weights as well as the training.
    """
    if model is not None:
        if not model.is_trained_:
            raise ValueError("the given STAI model is not trained; call model.train() first.")
        if not model.adata.obs_names.equals(adata.obs_names):
            raise ValueError(
                "the given STAI model was trained on other spatial cells; it predicts the cells "
                "it was set up with (model.adata)."
            )
        return model
    spatial = _minimal(adata, layer, spatial_key=spatial_key, sample_key=sample_key)
    ref = _minimal(reference, reference_layer, labels_key=labels_key)
    STAI.setup_anndata(
        spatial, spatial_key="spatial", sample_key=SAMPLE if sample_key is not None else None
    )
    STAI.setup_anndata(ref, labels_key=LABELS if labels_key is not None else None)
    torch.manual_seed(seed)
    fitted = STAI(spatial, ref, **(model_kwargs or {}))
    fitted.train(max_epochs=max_epochs, seed=seed, **(train_kwargs or {}))
    return fitted


def imputed_anndata(adata: AnnData, key: str = "stai_imputed") -> AnnData:
    """The imputed genes in ``adata.obsm[key]`` as a new AnnData, for scanpy and squidpy plots.

    Parameters
    ----------
    adata
        AnnData with a cells x genes DataFrame in ``obsm[key]`` (written by
        :func:`scfound.tl.impute` with a reference).
    key
        Key of the DataFrame.

    Returns
    -------
    AnnData with the imputed values in ``X``, the genes as ``var_names``, and copies of ``obs``
    and ``obsm['spatial']`` (when present) of ``adata``.

    Examples
    --------
    >>> imputed = sf.tl.imputed_anndata(adata_sp)
    >>> sq.pl.spatial_scatter(imputed, color="Mbp", shape=None)

    """
    if key not in adata.obsm:
        raise KeyError(f"adata.obsm[{key!r}] not found (obsm has {list(adata.obsm.keys())}).")
    frame = adata.obsm[key]
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"adata.obsm[{key!r}] is not a DataFrame of imputed genes.")
    obsm = {k: np.array(adata.obsm[k]) for k in ("spatial",) if k in adata.obsm}
    return AnnData(
        frame.to_numpy(dtype=np.float32),
        obs=adata.obs.copy(),
        var=pd.DataFrame(index=frame.columns.astype(str)),
        obsm=obsm,
    )
