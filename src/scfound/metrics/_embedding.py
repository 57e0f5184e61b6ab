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
