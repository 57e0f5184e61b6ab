"""Multi-omics figures: a predicted modality against the measured one, and modality matching."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from scfound._docs import doc_params, doc_show_save
from scfound._keys import latest_run, runs
from scfound._utils import UNS_KEY, get_matrix
from scfound.metrics import matching_score

from ._utils import finish_figure

#: normalisation of each target kind, as ``tl.predict_modality`` predicts it
_TARGET_SCALE = {"protein": "clr", "rna": "log1p_cp10k", "atac": "binary"}
#: cells drawn per panel at most (a random subset beyond that; Pearson uses every cell)
MAX_POINTS = 20_000


def _latest_key(adata: AnnData, verb: str) -> str:
    """``key_added`` of the latest run of ``verb`` recorded in ``adata``."""
    latest = latest_run(adata, verb)
    if latest is None:
        raise KeyError(
            f"adata.uns[{UNS_KEY!r}] records no {verb} run; pass `key=` (the obsm key of the "
            f"result), or run sf.tl.{verb} first."
        )
    return latest[0]


def _measured_values(
    measured: AnnData | pd.DataFrame | np.ndarray,
    predicted: pd.DataFrame,
    layer: str | None,
    target_kind: str | None,
) -> pd.DataFrame:
    """The measured target of the predicted cells, on the prediction's scale, as a DataFrame."""
    if isinstance(measured, AnnData):
        if target_kind not in _TARGET_SCALE:
            raise ValueError(
                f"target_kind must be one of {list(_TARGET_SCALE)} to normalise the measured "
                f"counts like the prediction, got {target_kind!r}."
            )
        missing = predicted.index.difference(measured.obs_names)
        if len(missing):
            raise KeyError(
                f"`measured` lacks {len(missing)} of the {len(predicted)} predicted cells "
                f"(e.g. {list(missing[:3])}); pass the target modality of the same cells."
            )
        features = predicted.columns.intersection(measured.var_names, sort=False)
        if len(features) == 0:
            raise KeyError(
                "`measured` has none of the predicted features (e.g. "
                f"{list(predicted.columns[:3])}; it has e.g. {list(measured.var_names[:3])})."
            )
        X = get_matrix(measured, layer)
        X = X.toarray() if sp.issparse(X) else np.asarray(X)
        # normalise over all the cell's measured features (as the model did), then select
        from scfound.models.scmognn import normalize_counts

        values = normalize_counts(
            torch.as_tensor(X, dtype=torch.float32), _TARGET_SCALE[target_kind]
        ).numpy()
        frame = pd.DataFrame(values, index=measured.obs_names, columns=measured.var_names)
        return frame.loc[predicted.index, features]
    if isinstance(measured, pd.DataFrame):
        missing = predicted.columns.difference(measured.columns)
        if len(missing) == len(predicted.columns):
            raise KeyError(
                "`measured` has none of the predicted features as columns (e.g. "
                f"{list(predicted.columns[:3])})."
            )
        if measured.shape[0] != predicted.shape[0]:
            raise ValueError(
                f"`measured` has {measured.shape[0]} rows; the prediction has "
                f"{predicted.shape[0]} cells."
            )
        return measured[predicted.columns.intersection(measured.columns, sort=False)]
    values = np.asarray(measured, dtype=np.float64)
    if values.shape != predicted.shape:
        raise ValueError(
            f"`measured` as an array must have the prediction's shape {predicted.shape}, got "
            f"{values.shape}."
        )
    return pd.DataFrame(values, index=predicted.index, columns=predicted.columns)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


@doc_params(show_save=doc_show_save)
def predicted_modality(  # noqa: D417 - show and save are filled in by doc_params
    adata: AnnData,
    measured: AnnData | pd.DataFrame | np.ndarray,
    *,
    key: str | None = None,
    features: Sequence[str] | None = None,
    layer: str | None = None,
    target_kind: str | None = None,
    ncols: int = 4,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Predicted against measured values of a modality, one scatter panel per feature.

    Each panel shows the cells of ``adata`` with the measured value on the x axis and the
    predicted one on the y axis, the identity line, and the Pearson correlation over the cells in
    the title (the competition's per-feature score). Use it after
    :func:`scfound.tl.predict_modality` on cells whose target was measured (a held-out test set).

    Parameters
    ----------
    adata
        Cells with a prediction in ``adata.obsm[key]`` (a DataFrame, cells x target features).
    measured
        The measured target of the same cells: an AnnData of raw counts (cells matched by name;
        normalised like the prediction: CLR for proteins, ``log1p`` CP10k for RNA, binary for
        ATAC), or a DataFrame (columns: features) or array already on the prediction's scale,
        in the order of ``adata``'s cells.
    key
        ``obsm`` key of the prediction; default the latest ``predict_modality`` run of ``adata``.
    features
        Features to show; default all predicted features that ``measured`` has (at most 16).
    layer
        Layer of ``measured`` (an AnnData) with raw counts; ``None``: its ``.X``.
    target_kind
        ``"protein"``, ``"rna"`` or ``"atac"``: how to normalise ``measured`` counts; default
        the kind recorded by the prediction run.
    ncols
        Panels per row.
    {show_save}

    Returns
    -------
    The figure, one axes per feature.

    Raises
    ------
    KeyError
        If there is no prediction under ``key``, or ``features`` names a feature that is not
        both predicted and measured.
    ValueError
        If ``measured`` does not fit the prediction's shape.

    Examples
    --------
    >>> sf.tl.predict_modality(rna_test, reference, source="rna", target="adt")
    >>> sf.pl.predicted_modality(rna_test, adt_test, layer="counts", features=["CD3", "CD19"])
    """
    if key is None:
        key = _latest_key(adata, "predict_modality")
    if key not in adata.obsm:
        raise KeyError(f"adata.obsm has no key {key!r}; obsm keys: {list(adata.obsm)}.")
    predicted = adata.obsm[key]
    if not isinstance(predicted, pd.DataFrame):
        raise ValueError(
            f"adata.obsm[{key!r}] must be a DataFrame with feature names as columns (as "
            f"sf.tl.predict_modality writes it), got {type(predicted).__name__}."
        )
    if target_kind is None and isinstance(measured, AnnData):
        target_kind = runs(adata, "predict_modality").get(key, {}).get("target_kind")
    truth = _measured_values(measured, predicted, layer, target_kind)
    available = list(truth.columns)
    if features is None:
        chosen = available[:16]
    else:
        chosen = [str(f) for f in features]
        unknown = [f for f in chosen if f not in available]
        if unknown:
            raise KeyError(
                f"features {unknown} are not both predicted and measured; available: "
                f"{available[:10]}{' ...' if len(available) > 10 else ''}."
            )
    if not chosen:
        raise ValueError("no feature to plot: `features` is empty.")
    if not isinstance(ncols, int | np.integer) or ncols < 1:
        raise ValueError(f"ncols must be a positive integer, got {ncols!r}.")
    ncols = min(int(ncols), len(chosen))
    nrows = -(-len(chosen) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.0 * nrows), squeeze=False)
    rng = np.random.default_rng(0)
    shown = np.arange(len(truth))
    if len(shown) > MAX_POINTS:
        shown = np.sort(rng.choice(shown, MAX_POINTS, replace=False))
    for ax, feature in zip(axes.ravel(), chosen, strict=False):
        x = truth[feature].to_numpy(dtype=np.float64)
        y = predicted[feature].to_numpy(dtype=np.float64)
        ax.scatter(x[shown], y[shown], s=3, alpha=0.4, linewidths=0, rasterized=True)
        low, high = min(x.min(), y.min()), max(x.max(), y.max())
        ax.plot([low, high], [low, high], color="0.4", lw=0.8, ls="--")
        ax.set_title(f"{feature}\nPearson r = {_pearson(x, y):.3f}", fontsize=9)
        ax.set_xlabel("measured", fontsize=8)
        ax.set_ylabel("predicted", fontsize=8)
    for ax in axes.ravel()[len(chosen) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return finish_figure(fig, show=show, save=save)


@doc_params(show_save=doc_show_save)
def matching(  # noqa: D417 - show and save are filled in by doc_params
    adata: AnnData,
    truth: np.ndarray | Sequence[int] | None = None,
    *,
    key: str | None = None,
    groupby: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Probability each cell's matching gives its true partner, and the matching score.

    After :func:`scfound.tl.match_modalities`, draws the histogram over cells of the
    probability on the true partner (0: missed, 1: certain and right), with the competition's
    matching score (:func:`scfound.metrics.matching_score`, the mean of those probabilities)
    and the chance level ``1 / n_other`` in the title; with ``groupby``, one bar per group of
    cells (mean probability on the true partner) instead.

    Parameters
    ----------
    adata
        Cells with matching probabilities in ``adata.obsm[key]`` (cells x other cells).
    truth
        Column of each cell's true partner (``-1``: none); ``None``: column ``i`` for cell ``i``
        (both modalities in the same cell order).
    key
        ``obsm`` key of the matching; default the latest ``match_modalities`` run of
        ``adata``.
    groupby
        Column of ``adata.obs`` (e.g. cell types) to average the probabilities in.
    ax
        Axes to draw into; by default a new figure is created.
    {show_save}

    Returns
    -------
    The figure holding the plot.

    Raises
    ------
    KeyError
        If there is no matching under ``key`` or ``groupby`` is not a column of ``obs``.
    ValueError
        If ``truth`` does not fit the matching's shape.

    Examples
    --------
    >>> sf.tl.match_modalities(rna, adt, reference)
    >>> sf.pl.matching(rna, truth=np.arange(rna.n_obs), groupby="cell_type")
    """
    if key is None:
        key = _latest_key(adata, "match_modalities")
    if key not in adata.obsm:
        raise KeyError(f"adata.obsm has no key {key!r}; obsm keys: {list(adata.obsm)}.")
    P = adata.obsm[key]
    P = sp.csr_matrix(P.to_numpy() if isinstance(P, pd.DataFrame) else P, dtype=np.float64)
    n, m = P.shape
    if truth is None:
        if n != m:
            raise ValueError(
                f"the matching is {n} x {m}: pass `truth` (the column of each cell's partner) "
                "when the two modalities do not hold the same number of cells."
            )
        truth = np.arange(n)
    partner = np.asarray(truth)
    score = matching_score(P, partner)  # checks shape, range and dtype of `truth`
    has = partner >= 0
    per_cell = np.zeros(n)
    per_cell[has] = np.asarray(P[np.flatnonzero(has), partner[has]]).ravel()
    if groupby is not None and groupby not in adata.obs:
        raise KeyError(f"groupby={groupby!r} is not a column of adata.obs: {list(adata.obs)}.")
    owned = ax is None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.0, 3.5))
    else:
        fig = ax.figure
    if groupby is None:
        ax.hist(per_cell, bins=np.linspace(0.0, 1.0, 21), color="C0")
        ax.set_xlabel("probability on the true partner")
        ax.set_ylabel("cells")
    else:
        means = pd.Series(per_cell, index=adata.obs_names).groupby(
            adata.obs[groupby].astype(str).to_numpy(), observed=True
        )
        means = means.mean().sort_values(ascending=False)
        ax.bar(np.arange(len(means)), means.to_numpy(), color="C0")
        ax.set_xticks(np.arange(len(means)), means.index, rotation=90, fontsize=8)
        ax.axhline(1.0 / m, color="0.4", lw=0.8, ls="--", label="chance")
        ax.set_ylabel("mean probability on the true partner")
        ax.legend(fontsize=8)
    ax.set_title(f"matching score {score:.4f} (chance {1.0 / m:.4f})", fontsize=10)
    if owned:
        fig.tight_layout()
    return finish_figure(fig, show=show, save=save, owned=owned)
