"""Baseline imputers for the masked-entry spatial imputation benchmark.

Every baseline sees only what a model sees: the observed count matrix ``obs`` (cells x genes,
held-out entries are zeros that cannot be told apart from true zeros), the cell coordinates
(spatial baselines) and nothing else. Each returns a dense ``float32`` matrix on the count scale,
so that :func:`scfound.metrics.imputation_scores` normalises it exactly like a model's output.

Internally the baselines work on log-normalised data, ``log1p(x / library * target_sum)`` with
``target_sum`` the median observed library size, and go back to counts with
``expm1(.) * library / target_sum`` (the observed library of each cell; a cell with no observed
count gets ``target_sum``, so that its imputed profile is kept rather than zeroed).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree
from sklearn.decomposition import PCA

from scfound.metrics import imputation_scores, normalize_log1p
from scfound.pp import draw_holdout_mask

Matrix = np.ndarray | sp.spmatrix
Weighting = Literal["uniform", "distance"]

#: Grid of :func:`tuned_knn_blend`: kNN sizes and weightings, and the spatial weight ``w``.
DEFAULT_BLEND_GRID: dict[str, tuple] = {
    "spatial_k": (5, 10, 20, 30, 50, 75, 100),
    "spatial_weighting": ("uniform", "distance"),
    "expression_k": (5, 10, 20, 50, 100, 200),
    "expression_weighting": ("uniform", "distance"),
    "w": (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
}

# Gathered neighbour values per block (cells x k x genes), to bound memory.
_BLOCK_ENTRIES = 8_000_000


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _dense(X: Matrix) -> np.ndarray:
    """Dense float64 copy-free view (when possible) of a counts matrix, checked."""
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"`obs` must be a 2-d cells x genes matrix, got shape {X.shape}.")
    X = X.astype(np.float64, copy=False)
    if not np.isfinite(X).all() or (X < 0).any():
        raise ValueError("`obs` must hold finite, non-negative counts.")
    return X


def _target_sum(totals: np.ndarray) -> float:
    """Median library size; the mean of the non-empty cells when the median is 0."""
    target = float(np.median(totals))
    if target > 0:
        return target
    positive = totals[totals > 0]
    return float(positive.mean()) if len(positive) else 1.0


def _log_normalise(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Log-normalised ``obs``, its library sizes and the target sum used."""
    totals = obs.sum(axis=1)
    target_sum = _target_sum(totals)
    return normalize_log1p(obs, target_sum), totals, target_sum


def _to_counts(logn: np.ndarray, totals: np.ndarray, target_sum: float) -> np.ndarray:
    """Back from log-normalised values to the count scale of each cell's observed library."""
    library = np.where(totals > 0, totals, target_sum)
    return (np.expm1(np.maximum(logn, 0.0)) * (library / target_sum)[:, None]).astype(np.float32)


def _pca(logn: np.ndarray, n_pcs: int, seed: int = 0) -> np.ndarray:
    """Principal components of log-normalised data (genes centred, not scaled)."""
    n_comps = max(1, min(n_pcs, min(logn.shape) - 1))
    return PCA(n_components=n_comps, random_state=seed).fit_transform(logn)


def _neighbors(points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and distances of the ``k`` nearest other cells, sorted by distance.

    The cell itself is excluded (also when another cell lies at distance 0).
    """
    n = len(points)
    if n < 2:
        raise ValueError("kNN imputation needs at least 2 cells.")
    k = min(k, n - 1)
    dist, idx = cKDTree(points).query(points, k=k + 1)
    dist, idx = dist.reshape(n, k + 1), idx.reshape(n, k + 1)
    drop = idx == np.arange(n)[:, None]
    drop[~drop.any(axis=1), -1] = True
    keep = ~drop
    return idx[keep].reshape(n, k), dist[keep].reshape(n, k)


def _neighbor_mean(
    values: np.ndarray,
    idx: np.ndarray,
    dist: np.ndarray,
    k: int,
    weighting: Weighting,
) -> np.ndarray:
    """Mean of ``values`` over the first ``k`` neighbours, uniform or ``1/distance``-weighted."""
    if weighting not in ("uniform", "distance"):
        raise ValueError(f"weighting must be 'uniform' or 'distance', got {weighting!r}.")
    k = min(k, idx.shape[1])
    idx, dist = idx[:, :k], dist[:, :k]
    if weighting == "uniform":
        weights = np.full(idx.shape, 1.0 / k)
    else:
        positive = dist[dist > 0]
        floor = 1e-3 * float(np.median(positive)) if len(positive) else 1.0
        weights = 1.0 / np.maximum(dist, floor)
        weights /= weights.sum(axis=1, keepdims=True)
    out = np.empty((len(idx), values.shape[1]), dtype=np.float64)
    block = max(1, _BLOCK_ENTRIES // max(k * values.shape[1], 1))
    for start in range(0, len(idx), block):
        rows = slice(start, start + block)
        out[rows] = np.einsum("nk,nkg->ng", weights[rows], values[idx[rows]])
    return out


def _check_coords(coords: np.ndarray, n_obs: int) -> np.ndarray:
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or len(coords) != n_obs:
        raise ValueError(f"`coords` must have shape ({n_obs}, n_dims), got {coords.shape}.")
    if not np.isfinite(coords).all():
        raise ValueError("`coords` must be finite.")
    return coords


# --------------------------------------------------------------------------------------------
# baselines
# --------------------------------------------------------------------------------------------


def zero_fill(obs: Matrix) -> np.ndarray:
    """No imputation: the observed counts themselves (held-out entries stay 0).

    Parameters
    ----------
    obs
        Observed counts, cells x genes.

    Returns
    -------
    Dense ``float32`` copy of ``obs``.
    """
    return _dense(obs).astype(np.float32)


def gene_mean(obs: Matrix) -> np.ndarray:
    """Each gene's mean log-normalised expression over all cells, for every cell.

    Parameters
    ----------
    obs
        Observed counts, cells x genes.

    Returns
    -------
    Dense ``float32`` cells x genes matrix on the count scale.
    """
    logn, totals, target_sum = _log_normalise(_dense(obs))
    means = np.broadcast_to(logn.mean(axis=0), logn.shape)
    return _to_counts(means, totals, target_sum)


def expression_knn(
    obs: Matrix,
    k: int = 15,
    weighted: bool = False,
    n_pcs: int = 15,
    seed: int = 0,
) -> np.ndarray:
    """Average of the ``k`` nearest cells in expression space (PCA of the log-normalised data).

    Parameters
    ----------
    obs
        Observed counts, cells x genes.
    k
        Number of neighbours (the cell itself excluded).
    weighted
        Weight neighbours by ``1 / distance`` instead of uniformly.
    n_pcs
        Number of principal components that define the distances.
    seed
        Random state of the PCA solver.

    Returns
    -------
    Dense ``float32`` cells x genes matrix on the count scale.
    """
    logn, totals, target_sum = _log_normalise(_dense(obs))
    idx, dist = _neighbors(_pca(logn, n_pcs, seed), k)
    pred = _neighbor_mean(logn, idx, dist, k, "distance" if weighted else "uniform")
    return _to_counts(pred, totals, target_sum)


def spatial_knn(
    obs: Matrix,
    coords: np.ndarray,
    k: int = 10,
    weighted: bool = False,
) -> np.ndarray:
    """Average of the ``k`` spatially nearest cells.

    Parameters
    ----------
    obs
        Observed counts, cells x genes.
    coords
        Cell coordinates, cells x 2 (or 3).
    k
        Number of neighbours (the cell itself excluded).
    weighted
        Weight neighbours by ``1 / distance`` instead of uniformly.

    Returns
    -------
    Dense ``float32`` cells x genes matrix on the count scale.
    """
    obs = _dense(obs)
    coords = _check_coords(coords, len(obs))
    logn, totals, target_sum = _log_normalise(obs)
    idx, dist = _neighbors(coords, k)
    pred = _neighbor_mean(logn, idx, dist, k, "distance" if weighted else "uniform")
    return _to_counts(pred, totals, target_sum)


def _knn_tables(
    logn: np.ndarray,
    coords: np.ndarray,
    spatial_ks: Sequence[int],
    spatial_weightings: Sequence[Weighting],
    expression_ks: Sequence[int],
    expression_weightings: Sequence[Weighting],
    n_pcs: int,
    seed: int,
) -> tuple[dict, dict]:
    """Spatial and expression kNN predictions (log scale) for every grid setting.

    Neighbours are searched once, for the largest ``k`` of each kind, and sliced.
    """
    s_idx, s_dist = _neighbors(coords, max(spatial_ks))
    e_idx, e_dist = _neighbors(_pca(logn, n_pcs, seed), max(expression_ks))
    spatial = {
        (k, wt): _neighbor_mean(logn, s_idx, s_dist, k, wt)
        for k in spatial_ks
        for wt in spatial_weightings
    }
    expression = {
        (k, wt): _neighbor_mean(logn, e_idx, e_dist, k, wt)
        for k in expression_ks
        for wt in expression_weightings
    }
    return spatial, expression


def tuned_knn_blend(
    obs: Matrix,
    coords: np.ndarray,
    seed: int = 0,
    grid: Mapping[str, Sequence[Any]] | None = None,
    val_fraction: float = 0.1,
    n_pcs: int = 15,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Blend of spatial and expression kNN, tuned on a validation mask of the observed entries.

    The prediction, in log-normalised space, is
    ``w * spatial_knn + (1 - w) * expression_knn``. Its parameters (spatial ``k`` and
    weighting, expression ``k`` and weighting, ``w``) are chosen as a careful user would
    without the test mask: a further ``val_fraction`` of the observed matrix is hidden
    (:func:`scfound.pp.draw_holdout_mask`), PCA and neighbours are rebuilt from that further
    masked matrix, every grid point is scored on the hidden entries with
    :func:`scfound.metrics.imputation_scores` (truth = the observed matrix), and the best
    validation Pearson wins (ties: the first in grid order). The chosen setting is then refit on
    the whole observed matrix.

    Parameters
    ----------
    obs
        Observed counts, cells x genes.
    coords
        Cell coordinates, cells x 2 (or 3).
    seed
        Seed of the validation mask (drawn from ``numpy.random.default_rng([seed, 1])``, a
        stream independent of a test mask drawn with the same seed) and of the PCA.
    grid
        Values to search, keys as in :data:`DEFAULT_BLEND_GRID` (missing keys take the
        defaults): ``spatial_k``, ``spatial_weighting``, ``expression_k``,
        ``expression_weighting`` and ``w``.
    val_fraction
        Fraction of the observed entries hidden for validation.
    n_pcs
        Principal components of the expression kNN.

    Returns
    -------
    The imputed ``float32`` matrix on the count scale and a dictionary with the chosen
    parameters, their validation scores (``val_rmse``, ``val_pearson``, ``val_cosine``), the
    number of settings scored (``n_candidates``) and the search time in seconds
    (``search_seconds``).
    """
    grid = {**DEFAULT_BLEND_GRID, **(grid or {})}
    unknown = set(grid) - set(DEFAULT_BLEND_GRID)
    if unknown:
        raise ValueError(f"unknown grid keys {sorted(unknown)}; use {list(DEFAULT_BLEND_GRID)}.")
    if any(not 0 <= w <= 1 for w in grid["w"]):
        raise ValueError(f"blend weights must lie in [0, 1], got {grid['w']}.")
    obs = _dense(obs)
    coords = _check_coords(coords, len(obs))
    n_max = len(obs) - 1
    spatial_ks = sorted({min(int(k), n_max) for k in grid["spatial_k"]})
    expression_ks = sorted({min(int(k), n_max) for k in grid["expression_k"]})

    start = time.perf_counter()
    # An independent stream: `default_rng(seed)` would redraw the uniforms of a test mask made
    # with the same seed (`mask_entries(seed=seed)`), so the validation entries would all be test
    # entries (zeros in `obs`).
    val_mask = draw_holdout_mask(obs, val_fraction, np.random.default_rng([seed, 1]))
    if not val_mask.any():
        raise ValueError("the validation mask is empty; `obs` is too small to tune on.")
    obs_val = np.where(val_mask, 0.0, obs)
    logn, totals, target_sum = _log_normalise(obs_val)
    spatial, expression = _knn_tables(
        logn,
        coords,
        spatial_ks,
        grid["spatial_weighting"],
        expression_ks,
        grid["expression_weighting"],
        n_pcs,
        seed,
    )

    best: dict[str, Any] | None = None
    seen: set = set()
    n_candidates = 0
    for (s_k, s_wt), (e_k, e_wt), w in itertools.product(spatial, expression, grid["w"]):
        # w = 0 ignores the spatial part and w = 1 the expression part: score once.
        key = (None if w == 0 else (s_k, s_wt), None if w == 1 else (e_k, e_wt), w)
        if key in seen:
            continue
        seen.add(key)
        pred = w * spatial[s_k, s_wt] + (1 - w) * expression[e_k, e_wt]
        scores = imputation_scores(obs, _to_counts(pred, totals, target_sum), val_mask)
        n_candidates += 1
        pearson = scores["pearson"] if np.isfinite(scores["pearson"]) else -np.inf
        if best is None or pearson > best["_pearson"]:
            best = {
                "spatial_k": s_k,
                "spatial_weighting": s_wt,
                "expression_k": e_k,
                "expression_weighting": e_wt,
                "w": float(w),
                "_pearson": pearson,
                **{f"val_{name}": value for name, value in scores.items()},
            }
    assert best is not None
    search_seconds = time.perf_counter() - start
    del best["_pearson"]

    logn, totals, target_sum = _log_normalise(obs)
    spatial, expression = _knn_tables(
        logn,
        coords,
        [best["spatial_k"]],
        [best["spatial_weighting"]],
        [best["expression_k"]],
        [best["expression_weighting"]],
        n_pcs,
        seed,
    )
    w = best["w"]
    pred = w * next(iter(spatial.values())) + (1 - w) * next(iter(expression.values()))
    params = {**best, "n_candidates": n_candidates, "search_seconds": round(search_seconds, 3)}
    return _to_counts(pred, totals, target_sum), params


def scvi_impute(
    obs: Matrix,
    seed: int = 0,
    max_epochs: int = 400,
    n_samples: int = 10,
    train_kwargs: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Impute with scVI trained on the observed counts (denoised expression, count scale).

    The tuned setting of the SpaFormer paper: ``n_hidden=128``, ``n_layers=1``,
    ``gene_likelihood='nb'``. The model is trained on a fresh AnnData of the observed counts
    (cells without any observed count are left out of training, since their log library size is
    undefined, but are imputed from their latent code all the same). The output is
    ``get_normalized_expression(library_size=1)`` averaged over ``n_samples`` posterior samples,
    times each cell's observed library size.

    Parameters
    ----------
    obs
        Observed counts, cells x genes (non-negative integers).
    seed
        Random seed (``scvi.settings.seed``).
    max_epochs
        Training epochs (scvi-tools' heuristic gives 400 for small data).
    n_samples
        Posterior samples averaged in the normalised expression.
    train_kwargs
        Passed to :meth:`scvi.model.SCVI.train`.

    Returns
    -------
    Dense ``float32`` cells x genes matrix on the count scale.
    """
    import scvi
    from anndata import AnnData

    counts = _dense(obs)
    if not np.array_equal(counts, np.round(counts)):
        raise ValueError("scVI needs integer counts in `obs`.")
    totals = counts.sum(axis=1)
    target_sum = _target_sum(totals)
    adata = AnnData(X=sp.csr_matrix(counts.astype(np.float32)))
    scvi.settings.seed = seed
    train = adata[totals > 0].copy()
    scvi.model.SCVI.setup_anndata(train)
    model = scvi.model.SCVI(train, n_hidden=128, n_layers=1, gene_likelihood="nb")
    model.train(max_epochs=max_epochs, **(train_kwargs or {}))
    norm = model.get_normalized_expression(
        adata if (totals == 0).any() else train,
        library_size=1,
        n_samples=n_samples,
        return_mean=True,
        return_numpy=True,
    )
    library = np.where(totals > 0, totals, target_sum)
    return (np.asarray(norm, dtype=np.float64) * library[:, None]).astype(np.float32)


def wnn_graph(embeddings: Mapping[str, np.ndarray], seed: int = 0, n_neighbors: int = 15):
    """Muon's weighted-nearest-neighbour graph of the same cells in several modalities.

    Parameters
    ----------
    embeddings
        Modality name -> cells x dimensions representation (e.g. RNA PCA, CLR proteins, LSI),
        rows in the same cell order.
    seed
        Random seed of the neighbour searches.
    n_neighbors
        Neighbours of each modality's graph and of the joint graph.

    Returns
    -------
    The joint graph's connectivities (cells x cells, sparse).
    """
    import anndata as ad
    import mudata
    import muon as mu
    import scanpy as sc

    parts = {}
    for name, emb in embeddings.items():
        emb = np.asarray(emb, dtype=np.float32)
        part = ad.AnnData(np.zeros((len(emb), 1), np.float32), obsm={"X_emb": emb})
        part.obs_names = [f"c{i}" for i in range(len(emb))]
        sc.pp.neighbors(
            part, n_neighbors=n_neighbors, use_rep="X_emb", random_state=seed, transformer="sklearn"
        )
        parts[name] = part
    joint = mudata.MuData(parts)
    mu.pp.neighbors(joint, n_neighbors=n_neighbors, key_added="wnn", random_state=seed)
    return joint.obsp["wnn_connectivities"]
