"""CellPLM behind the ``tl`` functions: embed, denoise, impute from a reference, annotate."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from scfound._utils import get_obs_column, record
from scfound.models import CellPLM
from scfound.pp._corpus import CORPUS_DATASET_KEY, CORPUS_SAMPLE_KEY, build_corpus

from ._cellplm import ADAPT_EPOCHS, FINE_TUNE_EPOCHS, cellplm_for, cellplm_input
from ._utils import training_summary

UNKNOWN = "unknown"


def _fit(
    small: AnnData,
    model: CellPLM | str | None,
    gene_key: str | None,
    max_epochs: int,
    model_kwargs: dict[str, Any] | None,
    train_kwargs: dict[str, Any] | None,
    seed: int,
    fine_tune: bool,
    head_only: bool = False,
) -> CellPLM:
    return cellplm_for(
        small,
        model,
        gene_key=gene_key,
        max_epochs=max_epochs,
        model_kwargs=model_kwargs,
        train_kwargs=train_kwargs,
        seed=seed,
        fine_tune=fine_tune,
        head_only=head_only,
    )


def embed_cellplm(adata: AnnData, key_added: str, **kw) -> CellPLM:
    """Write CellPLM embeddings of ``adata`` to ``obsm[key_added]``; return the model used."""
    small = cellplm_input(
        adata,
        layer=kw.pop("layer"),
        sample_key=kw.pop("sample_key"),
        spatial_key=kw.pop("spatial_key"),
        gene_key=kw["gene_key"],
    )
    model = _fit(small, **kw)
    adata.obsm[key_added] = model.get_latent_representation(small)
    return model


def denoise(
    adata: AnnData,
    *,
    model: CellPLM | str | None = None,
    layer: str | None = None,
    sample_key: str | None = None,
    spatial_key: str | None = None,
    gene_key: str | None = None,
    scale: str = "log1p",
    key_added: str = "cellplm_denoised",
    fine_tune: bool = False,
    max_epochs: int = 50,
    model_kwargs: dict[str, Any] | None = None,
    train_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    copy: bool = False,
) -> AnnData | None:
    """Denoise expression with CellPLM and write it into ``adata.layers[key_added]``.

    Parameters
    ----------
    adata
        Cells x genes with raw counts in ``layer`` (or ``.X``).
    model
        A trained :class:`~scfound.CellPLM` (zero-shot unless ``fine_tune``), the prefix of a
        checkpoint in the authors' layout, or ``None`` to train a small CellPLM on ``adata``.
    layer, sample_key, spatial_key, gene_key
        Counts layer; ``obs`` column of tissue samples (sentences); ``obsm`` key of coordinates;
        ``var`` column with the model's gene identifiers.
    scale
        ``"log1p"`` (log-normalised to 1e4, the paper's metric space) or ``"counts"``.
    key_added
        Layer to write.
    fine_tune, max_epochs, model_kwargs, train_kwargs, seed
        Training of the model on ``adata``.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` or the copy; writes ``adata.layers[key_added]`` (genes outside the model's vocabulary
    are NaN) and ``adata.uns['scfound']['denoise']``.

    """
    adata = adata.copy() if copy else adata
    small = cellplm_input(
        adata, layer=layer, sample_key=sample_key, spatial_key=spatial_key, gene_key=gene_key
    )
    fitted = _fit(small, model, gene_key, max_epochs, model_kwargs, train_kwargs, seed, fine_tune)
    adata.layers[key_added] = fitted.get_denoised_expression(small, scale=scale)
    record(
        adata,
        "denoise",
        {
            "method": "cellplm",
            "key_added": key_added,
            "scale": scale,
            "model": fitted._model_summary_string,
            **training_summary(fitted),
        },
    )
    return adata if copy else None


def _reference_corpus(
    adata: AnnData,
    reference: AnnData,
    *,
    layer: str | None,
    reference_layer: str | None,
    sample_key: str | None,
    reference_sample_key: str | None,
    spatial_key: str | None,
    gene_key: str | None,
    labels: tuple[np.ndarray, np.ndarray] | None = None,
) -> AnnData:
    corpus = build_corpus(
        {"query": adata, "reference": reference},
        layer={"query": layer, "reference": reference_layer},
        sample_key={"query": sample_key, "reference": reference_sample_key},
        spatial_key=spatial_key or "spatial",
        gene_key=gene_key,
    )
    if labels is not None:
        corpus.obs["labels"] = np.concatenate(labels).astype(str)
    CellPLM.setup_anndata(
        corpus,
        sample_key=CORPUS_SAMPLE_KEY,
        dataset_key=CORPUS_DATASET_KEY,
        spatial_key=spatial_key or "spatial",
        labels_key="labels" if labels is not None else None,
        unlabeled_category=UNKNOWN,
    )
    return corpus


def impute_cellplm(
    adata: AnnData,
    reference: AnnData,
    *,
    genes: list[str] | None,
    key_added: str,
    layer: str | None,
    reference_layer: str | None,
    sample_key: str | None,
    reference_sample_key: str | None,
    spatial_key: str | None,
    gene_key: str | None,
    scale: Literal["log1p", "counts"] = "log1p",
    **kw,
) -> CellPLM:
    """Impute genes of ``reference`` that ``adata`` lacks into ``adata.obsm[key_added]``."""
    corpus = _reference_corpus(
        adata,
        reference,
        layer=layer,
        reference_layer=reference_layer,
        sample_key=sample_key,
        reference_sample_key=reference_sample_key,
        spatial_key=spatial_key,
        gene_key=None if gene_key is None else gene_key,
    )
    measured = corpus.varm["measured"]
    missing = measured.index[~measured["query"] & measured["reference"]]
    if genes is None:
        genes = list(missing)
    else:
        genes = [str(g) for g in genes]
        absent = [g for g in genes if g not in set(measured.index[measured["reference"]])]
        if absent:
            raise ValueError(
                f"{len(absent)} requested genes are not in the reference (e.g. {absent[:10]})."
            )
    if not genes:
        raise ValueError("the reference measures no gene that adata lacks; nothing to impute.")
    model = _fit(corpus, fine_tune=True, gene_key=None, **kw)
    values = model.get_denoised_expression(corpus, scale=scale)
    rows = np.flatnonzero(corpus.obs[CORPUS_DATASET_KEY].to_numpy() == "query")
    cols = corpus.var_names.get_indexer(genes)
    adata.obsm[key_added] = pd.DataFrame(
        values[np.ix_(rows, cols)], index=adata.obs_names, columns=genes
    )
    return model


def annotate(
    adata: AnnData,
    labels_key: str,
    *,
    reference: AnnData | None = None,
    method: str = "cellplm",
    model: CellPLM | str | None = None,
    layer: str | None = None,
    reference_layer: str | None = None,
    sample_key: str | None = None,
    reference_sample_key: str | None = None,
    spatial_key: str | None = None,
    gene_key: str | None = None,
    unlabeled_category: str = UNKNOWN,
    key_added: str | None = None,
    fine_tune: Literal["model", "head"] = "model",
    max_epochs: int | None = None,
    adapt_epochs: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    train_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    copy: bool = False,
) -> AnnData | None:
    """Annotate cell types with CellPLM or stAI.

    ``method="cellplm"`` fine-tunes CellPLM with a classification head (``fine_tune="model"``) or
    fits the head alone on the frozen embeddings of a pre-trained model (``fine_tune="head"``, a
    linear probe; :meth:`~scfound.CellPLM.train_annotation_head`). Either
    ``adata.obs[labels_key]`` labels some cells (the others are ``unlabeled_category`` or
    missing) and the rest are predicted, or a labelled ``reference`` (``reference.obs[labels_key]``)
    is joined with ``adata`` (genes matched by name) and every cell of ``adata`` is predicted.

    ``method="stai"`` trains an :class:`~scfound.STAI` on the spatial ``adata`` and a labelled
    ``reference`` (default loss weights; the authors' annotation weights are
    ``model_kwargs={"weights": scfound.models.stai.ANNOTATION_WEIGHTS, "class_weight_power": 2}``)
    and predicts every spatial cell with the classifier on its latent vector, averaged over the
    gene-fold submodels.

    Parameters
    ----------
    adata
        Cells x genes with raw counts.
    labels_key
        Column of ``obs`` (of ``adata``, or of ``reference`` when given) with cell types.
    reference
        Labelled reference AnnData (optional).
    method
        ``"cellplm"`` or ``"stai"`` (needs a ``reference`` and coordinates in
        ``adata.obsm[spatial_key]``, default ``"spatial"``).
    model
        Pre-trained :class:`~scfound.CellPLM` or checkpoint prefix to fine-tune; a trained
        :class:`~scfound.STAI` of ``adata``'s cells; ``None`` trains a model.
    layer, reference_layer, sample_key, reference_sample_key, spatial_key, gene_key
        Counts layers, sample columns, coordinates and gene identifiers.
    unlabeled_category
        Label of cells to predict in ``adata.obs[labels_key]``.
    key_added
        Prefix of the outputs; default ``"cellplm"``.
    fine_tune
        CellPLM only: ``"model"`` trains the whole model on the classification loss (a given
        ``model`` starts from a fitted head, at a learning rate of 3e-4; from scratch at 5e-3);
        ``"head"`` keeps ``model`` (or, with ``model=None``, a model first trained
        self-supervised on the data for ``max_epochs``) frozen and fits the head alone.
    max_epochs
        Training epochs (``None``: for CellPLM 20 of fine-tuning a given ``model``, 50 from
        scratch; :meth:`scfound.STAI.train`'s default for stAI).
    adapt_epochs
        CellPLM with a given ``model`` only: epochs of self-supervised training on all cells
        (``adata``'s and ``reference``'s, labelled or not) before the head is fitted, which
        adapts the pre-trained model to these samples (as scANVI learns from the unlabelled
        cells). ``None``: 60 with ``fine_tune="model"``, 0 with ``fine_tune="head"`` (the probe
        of the frozen pre-trained embeddings, in seconds).
    model_kwargs, train_kwargs, seed
        Training settings.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` or the copy; writes ``obs[f"{key_added}_prediction"]``,
    ``obsm[f"{key_added}_probabilities"]`` (a DataFrame of class probabilities) and
    ``uns['scfound']['annotate']``.

    """
    if method not in ("cellplm", "stai"):
        raise ValueError(f"method={method!r} is not one of ('cellplm', 'stai').")
    if fine_tune not in ("model", "head"):
        raise ValueError(f"fine_tune={fine_tune!r} is not one of ('model', 'head').")
    if adapt_epochs is not None and adapt_epochs < 0:
        raise ValueError(f"adapt_epochs must be >= 0, got {adapt_epochs}.")
    if method == "stai" and reference is None:
        raise ValueError("method='stai' transfers labels from a `reference`; pass reference=.")
    if reference is not None and labels_key not in reference.obs:
        raise KeyError(
            f"labels column {labels_key!r} not found in reference.obs "
            f"(columns: {list(reference.obs.columns)})."
        )
    adata = adata.copy() if copy else adata
    key_added = key_added or method
    if method == "stai":
        from ._stai import stai_for

        fitted = stai_for(
            adata,
            reference,
            model,
            layer=layer,
            reference_layer=reference_layer,
            spatial_key=spatial_key or "spatial",
            sample_key=sample_key,
            labels_key=labels_key,
            max_epochs=max_epochs,
            model_kwargs=model_kwargs,
            train_kwargs=train_kwargs,
            seed=seed,
        )
        probs = fitted.predict(soft=True)
    elif reference is not None:
        ref_labels = get_obs_column(reference, labels_key).astype(str)
        data = _reference_corpus(
            adata,
            reference,
            layer=layer,
            reference_layer=reference_layer,
            sample_key=sample_key,
            reference_sample_key=reference_sample_key,
            spatial_key=spatial_key,
            gene_key=gene_key,
            labels=(np.full(adata.n_obs, UNKNOWN, dtype=object), ref_labels),
        )
        rows = np.flatnonzero(data.obs[CORPUS_DATASET_KEY].to_numpy() == "query")
        gene_key_model = None
    else:
        if labels_key not in adata.obs:
            raise KeyError(
                f"labels column {labels_key!r} not found in adata.obs "
                f"(columns: {list(adata.obs.columns)})."
            )
        labels = adata.obs[labels_key].astype(object).where(adata.obs[labels_key].notna(), None)
        labels = np.array([UNKNOWN if v is None or v == unlabeled_category else v for v in labels])
        if (labels == UNKNOWN).all():
            raise ValueError(f"adata.obs[{labels_key!r}] labels no cell; nothing to learn from.")
        data = cellplm_input(
            adata,
            layer=layer,
            sample_key=sample_key,
            spatial_key=spatial_key,
            gene_key=gene_key,
            labels=labels,
        )
        rows = np.arange(adata.n_obs)
        gene_key_model = gene_key
    if method == "cellplm":
        if adapt_epochs is None:
            adapt_epochs = ADAPT_EPOCHS if fine_tune == "model" else 0
        if max_epochs is None:
            max_epochs = 50 if model is None else FINE_TUNE_EPOCHS
        fitted = cellplm_for(
            data,
            model,
            gene_key=gene_key_model,
            max_epochs=max_epochs,
            model_kwargs=model_kwargs,
            train_kwargs=train_kwargs,
            seed=seed,
            fine_tune=True,
            head_only=fine_tune == "head",
            adapt_epochs=adapt_epochs,
        )
        probs = fitted.predict(data, soft=True).iloc[rows]
        probs.index = adata.obs_names
    adata.obs[f"{key_added}_prediction"] = pd.Categorical(probs.idxmax(axis=1).to_numpy())
    adata.obsm[f"{key_added}_probabilities"] = probs
    record(
        adata,
        "annotate",
        {
            "method": method,
            "labels_key": labels_key,
            "reference": reference is not None,
            "key_added": key_added,
            "fine_tune": fine_tune if method == "cellplm" else None,
            "max_epochs": max_epochs,
            "adapt_epochs": adapt_epochs if method == "cellplm" else None,
            "model": fitted._model_summary_string,
            **training_summary(fitted),
        },
    )
    return adata if copy else None
