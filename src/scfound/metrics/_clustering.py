"""Clustering agreement with known labels: PCA, kNN graph, Leiden over resolutions, ARI/NMI."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def clustering_scores(
    X: np.ndarray | sp.spmatrix,
    labels: Sequence | np.ndarray | pd.Series,
    *,
    n_pcs: int | None = 10,
    resolutions: Sequence[float] | np.ndarray | None = None,
    n_neighbors: int = 15,
    seed: int = 0,
    at_n_labels: bool = False,
) -> dict[str, float | int]:
    """Best agreement of Leiden clusters of ``X`` with known labels, over a resolution grid.

    ``X`` (e.g. a log-normalised imputed matrix or an embedding) is reduced by PCA (or used
    directly, ``n_pcs=None``), a kNN graph is built on it (:func:`scanpy.pp.neighbors`), and
    Leiden clustering
    (:func:`scanpy.tl.leiden`, igraph flavour, 2 iterations, undirected) is run at every
    resolution. The resolution with the best adjusted Rand index is reported. The inputs are
    not modified.

    Parameters
    ----------
    X
        Cells x features matrix (dense or sparse), used as given.
    labels
        Known labels, one per cell.
    n_pcs
        Number of principal components, capped at ``min(n_obs, n_vars) - 1``; ``None`` builds
        the graph on ``X`` itself (an embedding, clustered as users cluster it).
    resolutions
        Leiden resolutions to try; default ``0.1, 0.2, ..., 2.0``.
    n_neighbors
        Neighbours of the kNN graph, capped at ``n_obs - 1``.
    seed
        Random seed of PCA, the graph and Leiden.
    at_n_labels
        Also report the scores at the resolution whose number of clusters is closest to the
        number of distinct labels (ties: the better ARI), which needs no knowledge of the
        labels beyond their number.

    Returns
    -------
    Dictionary with ``'ari'`` and ``'nmi'`` (:func:`sklearn.metrics.adjusted_rand_score`,
    :func:`sklearn.metrics.normalized_mutual_info_score`) at the best resolution,
    ``'resolution'`` and ``'n_clusters'`` found there; with ``at_n_labels``, also
    ``'ari_at_k'``, ``'nmi_at_k'`` and ``'n_clusters_at_k'``.

    Examples
    --------
    >>> import numpy as np
    >>> from scfound.metrics import clustering_scores
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat([0, 1, 2], 50)
    >>> X = rng.normal(size=(150, 20)) + 8 * np.eye(3, 20)[labels]
    >>> clustering_scores(X, labels)["ari"] > 0.9
    True
    """
    import scanpy as sc

    if X.ndim != 2:
        raise ValueError(f"`X` must be a 2-d cells x features matrix, got shape {X.shape}.")
    n_obs, n_vars = X.shape
    labels = np.asarray(labels)
    if labels.shape != (n_obs,):
        raise ValueError(f"`labels` has shape {labels.shape}, expected ({n_obs},) (one per cell).")
    if pd.isna(labels).any():
        raise ValueError(f"`labels` has {int(pd.isna(labels).sum())} missing values.")
    if n_obs < 3 or n_vars < 2:
        raise ValueError(f"`X` must have at least 3 cells and 2 features, got shape {X.shape}.")
    values = X.data if sp.issparse(X) else np.asarray(X)
    if not np.all(np.isfinite(values)):
        raise ValueError("`X` contains NaN or infinite values.")
    resolutions = _resolutions(resolutions)
    if (n_pcs is not None and n_pcs < 1) or n_neighbors < 1:
        raise ValueError(f"`n_pcs` and `n_neighbors` must be positive, got {n_pcs}, {n_neighbors}.")

    data = sp.csr_matrix(X, dtype=np.float64) if sp.issparse(X) else np.array(X, np.float64)
    tmp = AnnData(X=data)
    if n_pcs is None:
        use_rep = "X"
    else:
        sc.pp.pca(tmp, n_comps=min(n_pcs, min(n_obs, n_vars) - 1), random_state=seed)
        use_rep = "X_pca"
    # exact neighbours (scanpy's choice below 4,096 cells anyway); its approximate path for
    # more cells fails with scipy >= 1.15 sparse arrays (``csr_array`` has no ``getnnz``)
    sc.pp.neighbors(
        tmp,
        n_neighbors=min(n_neighbors, n_obs - 1),
        use_rep=use_rep,
        random_state=seed,
        transformer="sklearn",
    )

    return _leiden_scores(tmp, labels, resolutions, seed, at_n_labels)


def graph_clustering_scores(
    connectivities: sp.spmatrix | np.ndarray,
    labels: Sequence | np.ndarray | pd.Series,
    *,
    resolutions: Sequence[float] | np.ndarray | None = None,
    seed: int = 0,
    at_n_labels: bool = False,
) -> dict[str, float | int]:
    """:func:`clustering_scores` of a given cell graph (e.g. muon's WNN graph).

    Parameters
    ----------
    connectivities
        Cells x cells weighted adjacency (as ``obsp["connectivities"]``).
    labels, resolutions, seed, at_n_labels
        As in :func:`clustering_scores`.

    Returns
    -------
    As :func:`clustering_scores`.
    """
    graph = sp.csr_matrix(connectivities, dtype=np.float64)
    n_obs = graph.shape[0]
    if graph.shape != (n_obs, n_obs) or n_obs < 3:
        raise ValueError(f"`connectivities` must be a square cell graph, got {graph.shape}.")
    labels = np.asarray(labels)
    if labels.shape != (n_obs,):
        raise ValueError(f"`labels` has shape {labels.shape}, expected ({n_obs},) (one per cell).")
    tmp = AnnData(obs=pd.DataFrame(index=[str(i) for i in range(n_obs)]))
    tmp.obsp["connectivities"] = graph
    tmp.uns["neighbors"] = {"connectivities_key": "connectivities", "params": {}}
    return _leiden_scores(tmp, labels, _resolutions(resolutions), seed, at_n_labels)


def _resolutions(resolutions) -> np.ndarray:
    if resolutions is None:
        resolutions = np.round(np.arange(0.1, 2.01, 0.1), 10)
    resolutions = np.atleast_1d(np.asarray(resolutions, dtype=float))
    if resolutions.size == 0 or not np.all(resolutions > 0):
        raise ValueError(f"`resolutions` must be non-empty and positive, got {resolutions!r}.")
    return resolutions


def _leiden_scores(
    tmp: AnnData, labels: np.ndarray, resolutions: np.ndarray, seed: int, at_n_labels: bool
) -> dict[str, float | int]:
    """Best ARI (and its NMI) of Leiden on ``tmp``'s neighbour graph over ``resolutions``."""
    import scanpy as sc

    n_labels = len(pd.unique(labels))
    best: dict[str, float | int] | None = None
    at_k: tuple | None = None
    for resolution in resolutions:
        sc.tl.leiden(
            tmp,
            resolution=float(resolution),
            flavor="igraph",
            n_iterations=2,
            directed=False,
            random_state=seed,
            key_added="_leiden",
        )
        clusters = tmp.obs["_leiden"].to_numpy()
        ari = float(adjusted_rand_score(labels, clusters))
        n_clusters = len(np.unique(clusters))
        nmi = float(normalized_mutual_info_score(labels, clusters))
        if best is None or ari > best["ari"]:
            best = {"ari": ari, "nmi": nmi, "resolution": float(resolution)}
            best["n_clusters"] = n_clusters
        key = (abs(n_clusters - n_labels), -ari)
        if at_k is None or key < at_k[0]:
            at_k = (key, ari, nmi, n_clusters)
    if at_n_labels:
        best.update({"ari_at_k": at_k[1], "nmi_at_k": at_k[2], "n_clusters_at_k": at_k[3]})
    return best
