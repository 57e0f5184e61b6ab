"""Scores of an integrated (joint) embedding, through scib-metrics where it has them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ._clustering import clustering_scores


def _import_scib():
    try:
        import scib_metrics
    except ImportError as err:  # an optional dependency
        raise ImportError(
            "embedding_scores needs scib-metrics: pip install 'scfound[metrics]' "
            "(or pip install scib-metrics)."
        ) from err
    return scib_metrics


def _neighbors(X: np.ndarray, k: int):
    """Exact ``k`` nearest neighbours (self excluded) as scib-metrics' ``NeighborsResults``."""
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    distances, indices = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(X)
    return NeighborsResults(indices=indices[:, 1:], distances=distances[:, 1:])


def embedding_scores(
    X: np.ndarray,
    labels: Sequence | np.ndarray | pd.Series,
    batch: Sequence | np.ndarray | pd.Series | None = None,
    *,
    n_neighbors: int = 15,
    seed: int = 0,
) -> dict[str, float]:
    """Bio-conservation and batch-correction scores of an embedding (scIB's definitions).

    Bio-conservation: Leiden NMI and ARI against ``labels`` at the best resolution of a grid
    (:func:`scfound.metrics.clustering_scores` on the embedding itself) and the cell-type
    silhouette (``scib_metrics.silhouette_label``, rescaled to [0, 1]). With ``batch``, batch
    correction: batch silhouette (``scib_metrics.silhouette_batch``), iLISI
    (``scib_metrics.ilisi_knn`` on an exact 90-neighbour graph) and graph connectivity
    (``scib_metrics.graph_connectivity``), each 1 for perfect mixing / connected types.

    Parameters
    ----------
    X
        Cells x dimensions embedding.
    labels
        Cell types (or other known groups), one per cell.
    batch
        Batch (sample, donor, ...) of each cell; batch scores are reported when it has at
        least two values.
    n_neighbors
        Neighbours of the graph for clustering and graph connectivity.
    seed
        Random seed of the neighbour graphs and Leiden.

    Returns
    -------
    ``nmi``, ``ari``, ``asw_label`` and, with two or more batches, ``asw_batch``, ``ilisi``,
    ``graph_connectivity``.

    Raises
    ------
    ValueError
        If ``X`` is not a finite 2-d array or ``labels`` / ``batch`` do not have one value per
        cell.
    ImportError
        If scib-metrics is not installed.
    """
    scib_metrics = _import_scib()
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or not np.isfinite(X).all():
        raise ValueError(f"`X` must be a finite 2-d cells x dimensions array, got {X.shape}.")
    labels = np.asarray(labels).astype(str)
    if labels.shape != (X.shape[0],):
        raise ValueError(f"`labels` has shape {labels.shape}, expected ({X.shape[0]},).")
    leiden = clustering_scores(X, labels, n_pcs=None, n_neighbors=n_neighbors, seed=seed)
    out = {
        "nmi": float(leiden["nmi"]),
        "ari": float(leiden["ari"]),
        "asw_label": float(scib_metrics.silhouette_label(X, labels)),
    }
    if batch is None:
        return out
    batch = np.asarray(batch).astype(str)
    if batch.shape != (X.shape[0],):
        raise ValueError(f"`batch` has shape {batch.shape}, expected ({X.shape[0]},).")
    if len(np.unique(batch)) < 2:
        return out
    k = min(90, X.shape[0] - 1)
    out["asw_batch"] = float(scib_metrics.silhouette_batch(X, labels, batch))
    out["ilisi"] = float(scib_metrics.ilisi_knn(_neighbors(X, k), batch))
    graph = _neighbors(X, min(n_neighbors, X.shape[0] - 1))
    out["graph_connectivity"] = float(scib_metrics.graph_connectivity(graph, labels))
    return out


def confounder_information(
    X: np.ndarray,
    confounder: Sequence | np.ndarray | pd.Series,
    *,
    categorical: bool | None = None,
    seed: int = 0,
) -> float:
    """Information an embedding keeps about a confounder, I(z, c) as in SAILER's evaluation.

    The mean over the embedding's dimensions of the mutual information between each dimension
    and the confounder, by scikit-learn's nearest-neighbour estimators
    (:func:`~sklearn.feature_selection.mutual_info_regression` for a continuous confounder
    such as the log read depth, :func:`~sklearn.feature_selection.mutual_info_classif` for a
    categorical one such as the batch). 0 means no dimension tells anything about the
    confounder; lower is better for an embedding meant to be free of it.

    Parameters
    ----------
    X
        Cells x dimensions embedding.
    confounder
        One value per cell: numbers (e.g. ``log(n_fragments)``) or categories (e.g. batches).
    categorical
        Whether ``confounder`` is categorical; by default, when its values are not numbers.
    seed
        Random state of the estimators (they add a little noise to break ties).

    Returns
    -------
    Mean mutual information in nats.

    Raises
    ------
    ValueError
        If ``X`` is not a finite 2-d array, or ``confounder`` does not have one finite value per
        cell.
    """
    from sklearn.feature_selection import mutual_info_classif, mutual_info_regression

    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or not np.isfinite(X).all():
        raise ValueError(f"`X` must be a finite 2-d cells x dimensions array, got {X.shape}.")
    values = pd.Series(np.asarray(confounder))
    if values.shape != (X.shape[0],):
        raise ValueError(f"`confounder` has shape {values.shape}, expected ({X.shape[0]},).")
    if categorical is None:
        categorical = not pd.api.types.is_numeric_dtype(values)
    if categorical:
        codes = pd.factorize(values.astype(str))[0]
        return float(mutual_info_classif(X, codes, random_state=seed).mean())
    numbers = values.to_numpy(dtype=np.float64)
    if not np.isfinite(numbers).all():
        raise ValueError("`confounder` has NaN or infinite values.")
    return float(mutual_info_regression(X, numbers, random_state=seed).mean())


def neighbor_batch_composition(
    X: np.ndarray,
    batch: Sequence | np.ndarray | pd.Series,
    *,
    n_neighbors: int = 50,
) -> pd.DataFrame:
    """Batch composition of each cell's neighbourhood, as SAILER's evaluation of batch mixing.

    For every cell, the share of each batch among its ``n_neighbors`` nearest cells in the
    embedding (exact Euclidean neighbours, the cell itself excluded), corrected for the batches'
    sizes: ``p_b = (n_b / N_b) / sum_b' (n_b' / N_b')`` with ``n_b`` the neighbours from batch
    ``b`` and ``N_b`` its cells. A well-mixed embedding gives ``p_b`` near ``1 / n_batches``
    for every batch; a cell whose neighbours all come from its own batch gives 1 for it.
    The SAILER paper shows these shares as distributions (``p_0`` for two batches); a single
    number is the mean over cells of the total-variation distance to uniform,
    ``0.5 * |p - 1 / B|.sum(axis=1).mean()`` (0 = perfectly mixed).

    Parameters
    ----------
    X
        Cells x dimensions embedding.
    batch
        Batch of each cell (at least two batches).
    n_neighbors
        Neighbours per cell (the paper: 50).

    Returns
    -------
    Cells x batches DataFrame of the size-corrected shares (rows sum to 1; index ``0..n-1``,
    or the index of ``batch`` when it is a Series), columns the batch names.

    Raises
    ------
    ValueError
        If ``X`` is not a finite 2-d array, ``batch`` does not have one value per cell, has
        missing values or a single value, or ``n_neighbors`` is not between 1 and the number
        of cells minus 1.
    """
    from sklearn.neighbors import NearestNeighbors

    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or not np.isfinite(X).all():
        raise ValueError(f"`X` must be a finite 2-d cells x dimensions array, got {X.shape}.")
    index = batch.index if isinstance(batch, pd.Series) else pd.RangeIndex(X.shape[0])
    if pd.isna(np.asarray(batch, dtype=object)).any():
        raise ValueError("`batch` has missing values; give every cell its batch.")
    values = np.asarray(batch).astype(str)
    if values.shape != (X.shape[0],):
        raise ValueError(f"`batch` has shape {values.shape}, expected ({X.shape[0]},).")
    codes, names = pd.factorize(values, sort=True)
    if len(names) < 2:
        raise ValueError("`batch` has a single value; batch mixing needs at least two batches.")
    if not 1 <= n_neighbors < X.shape[0]:
        raise ValueError(f"n_neighbors must be between 1 and {X.shape[0] - 1}, got {n_neighbors}.")
    _, neighbors = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(X).kneighbors(X)
    neighbor_codes = codes[neighbors[:, 1:]]
    counts = np.stack([(neighbor_codes == b).sum(1) for b in range(len(names))], axis=1)
    shares = counts / np.bincount(codes, minlength=len(names))
    shares = shares / shares.sum(1, keepdims=True)
    return pd.DataFrame(shares, index=index, columns=list(names))
