"""Fit, load or carry over a CellPLM for the ``tl`` functions; the caller's AnnData is not touched.

As for SpaFormer, the model sees a lightweight AnnData that shares the caller's matrix (no copy) and
holds its own ``obs``; results are written back under documented keys only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from scfound._utils import get_matrix, get_obs_column
from scfound.models import CellPLM

#: architecture of a CellPLM trained from scratch by the ``tl`` functions (CPU-sized)
SMALL_CELLPLM = {
    "n_hidden": 256,
    "n_layers": 2,
    "n_latent": 64,
    "n_decoder_hidden": 256,
}

#: epochs of self-supervised adaptation of a pre-trained model before it is fine-tuned to annotate
ADAPT_EPOCHS = 60

#: step size of the self-supervised adaptation of a pre-trained model before annotation
ADAPT_LR = 1e-3

#: step size of fine-tuning a pre-trained model (after its head was fitted) for annotation
FINE_TUNE_LR = 3e-4

#: epochs of fine-tuning a pre-trained model for annotation
FINE_TUNE_EPOCHS = 20

#: step size of training an annotation model from scratch (as the authors' annotation pipeline)
SCRATCH_LR = 5e-3


def cellplm_input(
    adata: AnnData,
    *,
    layer: str | None = None,
    sample_key: str | None = None,
    spatial_key: str | None = None,
    gene_key: str | None = None,
    labels: np.ndarray | None = None,
) -> AnnData:
    """A minimal AnnData sharing ``adata``'s counts, registered with :meth:`CellPLM.setup_anndata`.

    ``labels`` (one per cell, ``"unknown"`` for unlabelled cells) adds an annotation target.
    """
    X = get_matrix(adata, layer)
    obs = pd.DataFrame(index=adata.obs_names.copy())
    if sample_key is not None:
        obs["sample"] = get_obs_column(adata, sample_key).astype(str)
    if labels is not None:
        obs["labels"] = np.asarray(labels).astype(str)
    var = (
        adata.var[[gene_key]].copy()
        if gene_key is not None
        else pd.DataFrame(index=adata.var_names)
    )
    small = AnnData(X=X, obs=obs, var=var)
    obsm_key = None
    if spatial_key is not None and spatial_key in adata.obsm:
        small.obsm["spatial"] = np.asarray(adata.obsm[spatial_key], dtype=np.float64)[:, :2]
        obsm_key = "spatial"
    CellPLM.setup_anndata(
        small,
        sample_key="sample" if sample_key is not None else None,
        spatial_key=obsm_key,
        labels_key="labels" if labels is not None else None,
    )
    return small


def cellplm_for(
    small: AnnData,
    model: CellPLM | str | None,
    *,
    gene_key: str | None = None,
    max_epochs: int = 50,
    model_kwargs: dict[str, Any] | None = None,
    train_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    fine_tune: bool = False,
    head_only: bool = False,
    adapt_epochs: int = 0,
) -> CellPLM:
    """A CellPLM for ``small``.

    ``model`` may be a trained :class:`CellPLM` (carried over with :meth:`CellPLM.from_model`), the
    prefix of a checkpoint in the authors' layout (read with :meth:`CellPLM.load_pretrained`), or
    ``None`` (a CPU-sized model, :data:`SMALL_CELLPLM`, is trained on ``small`` from scratch).
    ``fine_tune`` trains a given model further on ``small`` for ``max_epochs``. ``head_only``
    (annotation) leaves the given or self-supervised model as it is and fits only its annotation
    head on the frozen embeddings (:meth:`CellPLM.train_annotation_head`).

    For annotation with a given model, ``adapt_epochs`` of self-supervised training on all cells
    of ``small`` (labelled or not, at :data:`ADAPT_LR`) come first; fine-tuning then starts from
    the fitted head (a linear probe, then the whole model at :data:`FINE_TUNE_LR`: "LP-FT",
    Kumar et al., ICLR 2022) instead of a random one.
    """
    model_kwargs = dict(model_kwargs or {})
    train_kwargs = {"seed": seed, **(train_kwargs or {})}
    labelled = small.obs.get("labels") is not None
    if labelled and model is not None and adapt_epochs > 0:
        adapted = _carry_over(
            model, small, gene_key, {**model_kwargs, "classification_weight": 0.0}
        )
        adapted.train(max_epochs=adapt_epochs, lr=ADAPT_LR, seed=seed)
        model = adapted
    if head_only:  # self-supervised objective only; the head is fitted afterwards
        model_kwargs.setdefault("classification_weight", 0.0)
    elif labelled:
        # annotation replaces the decoder's objective by the classifier's (as the released
        # pipeline) and drops the latent KL (the released pipeline swaps the Gaussian mixture for
        # a plain projection); from scratch it takes a larger step than pre-training
        model_kwargs.setdefault("reconstruction_weight", 0.0)
        # explicit, as a model carried over keeps its weights (the adapted one had no classifier)
        model_kwargs.setdefault("classification_weight", 1.0)
        train_kwargs.setdefault("lr", SCRATCH_LR if model is None else FINE_TUNE_LR)
        train_kwargs.setdefault("plan_kwargs", {"max_kl_weight": 0.0})
    if model is None:
        torch.manual_seed(seed)  # the initial weights, so that `seed` makes the result reproducible
        new = CellPLM(small, gene_key=gene_key, **{**SMALL_CELLPLM, **model_kwargs})
        new.train(max_epochs=max_epochs, **train_kwargs)
    else:
        new = _carry_over(model, small, gene_key, model_kwargs)
    if head_only:
        new.train_annotation_head(seed=seed)
    elif fine_tune and model is not None:
        if labelled:  # LP-FT: a fitted head does not distort the pre-trained features
            new.train_annotation_head(seed=seed)
        new.train(max_epochs=max_epochs, **train_kwargs)
    return new


def _carry_over(
    model: CellPLM | str, small: AnnData, gene_key: str | None, model_kwargs: dict[str, Any]
) -> CellPLM:
    """``model`` (a CellPLM or the prefix of an authors' checkpoint) for ``small``'s cells."""
    if isinstance(model, str):
        return CellPLM.load_pretrained(model, small, gene_key=gene_key, **model_kwargs)
    if isinstance(model, CellPLM):
        return CellPLM.from_model(
            model, small, gene_key=gene_key, drop_unknown_genes=True, **model_kwargs
        )
    raise TypeError(
        f"model must be a CellPLM, a checkpoint prefix or None, not {type(model).__name__}."
    )
