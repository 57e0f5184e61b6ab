"""scATAC-seq simulation in the manner of SCAN-ATAC-Sim (Chen et al., 2021), at the peak level.

Each cell draws its fragment count from a log-normal distribution; a fraction ``rho`` (the
signal-to-noise ratio, "fraction of reads in peaks") of the fragments falls into the peaks of its
cell type's bulk profile, in proportion to the profile, and the rest is background spread
uniformly over every feature (the peaks and ``n_background`` background bins).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from scfound._utils import get_matrix, get_obs_column

#: the three simulations of the SAILER paper (Cao et al. 2021, Sec. 2.2.5), per batch
PRESETS: dict[str, dict[str, Any]] = {
    # deep sequencing, 5 cell types, one of them rare (1 %)
    "sim1": {
        "n_cells": 10_000,
        "fractions": [0.2475] * 4 + [0.01],
        "mu": [5000.0],
        "sigma": 1.5,
        "rho": [0.4],
        "batch_types": None,
    },
    # shallow sequencing, one sample, 9 cell types
    "sim2": {
        "n_cells": 9_000,
        "fractions": [1 / 9] * 9,
        "mu": [3000.0],
        "sigma": 1.5,
        "rho": [0.4],
        "batch_types": None,
    },
    # two samples differing in depth and signal, 4 shared types and one rare type specific to
    # each sample
    "sim3": {
        "n_cells": 6_000,
        "fractions": [0.24, 0.24, 0.24, 0.24, 0.04, 0.04],
        "mu": [2500.0, 5000.0],
        "sigma": 1.5,
        "rho": [0.4, 0.5],
        "batch_types": [[0, 1, 2, 3, 4], [0, 1, 2, 3, 5]],
    },
}


def pseudobulk_profiles(
    adata: AnnData,
    labels_key: str,
    layer: str | None = None,
    *,
    types: Sequence[str] | None = None,
    n_peaks: int | None = None,
) -> pd.DataFrame:
    """Bulk-like accessibility profiles of the cell types of a scATAC-seq dataset.

    Each type's profile is the fraction of its cells in which each peak is accessible; with
    ``n_peaks`` only the peaks accessible in most cells overall are kept.

    Parameters
    ----------
    adata
        Cells x peaks counts.
    labels_key
        Column of ``adata.obs`` with the cell types.
    layer
        Layer with the counts (``None``: ``.X``).
    types
        Types to keep, in this order (default all, most abundant first).
    n_peaks
        Keep this many peaks (the most frequently accessible); default all.

    Returns
    -------
    Types x peaks DataFrame (rows sum to 1).
    """
    labels = pd.Series(np.asarray(get_obs_column(adata, labels_key)).astype(str))
    X = sp.csr_matrix(get_matrix(adata, layer)) > 0
    if types is None:
        types = labels.value_counts().index.tolist()
    columns = pd.Index(adata.var_names.astype(str))
    if n_peaks is not None and n_peaks < X.shape[1]:
        keep = np.sort(np.argsort(-np.asarray(X.sum(0)).ravel(), kind="stable")[:n_peaks])
        X, columns = X[:, keep], columns[keep]
    rows = []
    for name in types:
        cells = np.flatnonzero(labels.to_numpy() == str(name))
        if cells.size == 0:
            raise ValueError(f"type {name!r} has no cells in adata.obs[{labels_key!r}].")
        rows.append(np.asarray(X[cells].mean(0)).ravel())
    profiles = np.vstack(rows) + 1e-6
    profiles /= profiles.sum(1, keepdims=True)
    return pd.DataFrame(profiles, index=pd.Index(types, name=labels_key), columns=columns)


def _random_profiles(n_types: int, n_peaks: int, rng: np.random.Generator) -> np.ndarray:
    """Synthetic bulk profiles: shared peaks plus a block of type-specific peaks per type."""
    strength = rng.gamma(1.0, 1.0, size=n_peaks)
    shared = rng.random(n_peaks) < 0.3
    profiles = np.zeros((n_types, n_peaks))
    owner = rng.integers(0, n_types, size=n_peaks)
    for t in range(n_types):
        profiles[t] = strength * (shared | (owner == t))
    profiles += 1e-6
    return profiles / profiles.sum(1, keepdims=True)


def simulate_atac(
    bulk: pd.DataFrame | np.ndarray | None = None,
    *,
    preset: Literal["sim1", "sim2", "sim3"] | None = None,
    n_cells: int | None = None,
    n_peaks: int = 2000,
    n_background: int | None = None,
    fractions: Sequence[float] | None = None,
    mu: float | Sequence[float] | None = None,
    sigma: float | None = None,
    rho: float | Sequence[float] | None = None,
    batch_types: Sequence[Sequence[int]] | None = None,
    peak_bias: float = 0.0,
    seed: int = 0,
) -> AnnData:
    """Simulate scATAC-seq counts of cell types with known labels, in one or several batches.

    SCAN-ATAC-Sim's generative process at the level of features: a cell of type ``t`` in batch
    ``b`` gets ``n ~ LogNormal(log mu_b, log sigma)`` fragments; ``Binomial(n, rho_b)`` of them
    fall into peaks with probabilities given by the bulk profile of ``t`` (times a per-batch
    peak bias when ``peak_bias > 0``), the rest uniformly over all features (peaks and
    background bins).

    Parameters
    ----------
    bulk
        Types x peaks bulk profiles (non-negative; e.g. :func:`pseudobulk_profiles` of a real
        dataset). Default: random profiles with shared and type-specific peaks.
    preset
        ``"sim1"`` (deep, 5 types, one rare at 1 %), ``"sim2"`` (shallow, 9 types), ``"sim3"``
        (two batches, depths 2,500 and 5,000, ``rho`` 0.4 and 0.5, 4 shared types and one rare
        type specific to each batch) as in the SAILER paper; the other arguments override it.
    n_cells
        Cells in all (default the preset's, else 1,000).
    n_peaks
        Peaks of the random profiles (ignored when ``bulk`` is given).
    n_background
        Background bins (features without signal); default as many as peaks.
    fractions
        Share of each type among the cells of a batch (normalised over the types present in the
        batch). Default equal shares.
    mu
        Mean fragments per cell, one value or one per batch (default the preset's, else 3,000).
    sigma
        Geometric standard deviation of the fragments per cell (``log sigma`` is the standard
        deviation of the log count; default 1.5).
    rho
        Fraction of fragments in peaks, one value or one per batch (default 0.4).
    batch_types
        For each batch, the indices of the types present; the number of batches is its length
        (default one batch with every type).
    peak_bias
        Standard deviation of a log-normal multiplicative bias of each peak in each batch
        (batch-specific peak accessibility; 0 = none).
    seed
        Random seed.

    Returns
    -------
    Cells x features AnnData with integer counts in ``X`` and ``layers["counts"]`` (CSR),
    ``obs["cell_type"]``, ``obs["batch"]`` and ``obs["n_fragments"]`` (the simulated depth),
    ``var["is_peak"]``, the bulk profiles (0 on background bins) in ``varm["bulk"]`` and the
    settings in ``uns["simulate_atac"]``.
    """
    settings: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}.")
        settings.update(PRESETS[preset])
    given = {
        "n_cells": n_cells,
        "fractions": fractions,
        "mu": mu,
        "sigma": sigma,
        "rho": rho,
        "batch_types": batch_types,
    }
    settings.update({k: v for k, v in given.items() if v is not None})
    rng = np.random.default_rng(seed)

    if bulk is None:
        n_types = len(settings.get("fractions") or []) or 4
        if settings.get("batch_types"):
            n_types = max(n_types, 1 + max(max(b) for b in settings["batch_types"]))
        profiles = _random_profiles(n_types, n_peaks, rng)
        type_names = [f"type_{t}" for t in range(n_types)]
        peak_names = [f"peak_{j}" for j in range(n_peaks)]
    else:
        frame = bulk if isinstance(bulk, pd.DataFrame) else pd.DataFrame(np.asarray(bulk))
        profiles = frame.to_numpy(dtype=np.float64)
        if profiles.ndim != 2 or profiles.shape[0] < 1 or profiles.shape[1] < 1:
            raise ValueError(f"bulk must be a types x peaks table, got shape {profiles.shape}.")
        if not np.all(np.isfinite(profiles)) or profiles.min() < 0 or (profiles.sum(1) <= 0).any():
            raise ValueError(
                "bulk must hold finite non-negative values with a positive sum for every type."
            )
        profiles = profiles / profiles.sum(1, keepdims=True)
        type_names = [str(t) for t in frame.index]
        peak_names = [str(p) for p in frame.columns]
    n_types, n_peaks = profiles.shape

    batch_types = settings.get("batch_types") or [list(range(n_types))]
    n_batches = len(batch_types)
    for b, present in enumerate(batch_types):
        bad = [t for t in present if not 0 <= int(t) < n_types]
        if bad or not present:
            raise ValueError(
                f"batch_types[{b}] must list type indices in [0, {n_types}), got {list(present)}."
            )
    fracs = np.asarray(settings.get("fractions") or [1.0] * n_types, dtype=np.float64)
    if fracs.shape != (n_types,) or np.any(fracs < 0):
        raise ValueError(
            f"fractions must be {n_types} non-negative shares (one per type), got {list(fracs)}."
        )

    def per_batch(value: Any, default: float, name: str) -> np.ndarray:
        values = np.atleast_1d(np.asarray(default if value is None else value, dtype=np.float64))
        if values.size == 1:
            values = np.repeat(values, n_batches)
        if values.size != n_batches:
            raise ValueError(f"{name} needs one value or one per batch ({n_batches}).")
        return values

    mus = per_batch(settings.get("mu"), 3000.0, "mu")
    rhos = per_batch(settings.get("rho"), 0.4, "rho")
    sig = float(settings.get("sigma", 1.5))
    if np.any(mus <= 0) or sig < 1 or np.any((rhos < 0) | (rhos > 1)):
        raise ValueError(
            f"need mu > 0, sigma >= 1 (geometric) and rho in [0, 1]; got mu={list(mus)}, "
            f"sigma={sig}, rho={list(rhos)}."
        )
    total = int(settings.get("n_cells", 1000))
    n_bg = n_peaks if n_background is None else int(n_background)
    n_features = n_peaks + n_bg

    # cells per batch (equal) and per type within the batch
    per_batch_cells = np.full(n_batches, total // n_batches)
    per_batch_cells[: total % n_batches] += 1
    labels, batches = [], []
    for b, present in enumerate(batch_types):
        share = fracs[list(present)]
        if share.sum() <= 0:
            raise ValueError(f"the types of batch {b} all have fraction 0.")
        counts = np.floor(per_batch_cells[b] * share / share.sum()).astype(int)
        counts[np.argmax(share)] += per_batch_cells[b] - counts.sum()
        labels += [np.repeat(np.asarray(present, dtype=int), counts)]
        batches += [np.full(counts.sum(), b)]
    label = np.concatenate(labels)
    batch = np.concatenate(batches)
    n = label.size

    log_sd = np.log(sig)
    depth = np.maximum(
        1, np.round(np.exp(rng.normal(np.log(mus[batch]) - log_sd**2 / 2, log_sd)))
    ).astype(np.int64)
    signal = rng.binomial(depth, rhos[batch])
    background = depth - signal

    bias = np.ones((n_batches, n_peaks))
    if peak_bias > 0:
        bias = np.exp(rng.normal(0.0, peak_bias, size=(n_batches, n_peaks)))

    rows, cols = [], []
    for b in range(n_batches):
        for t in range(n_types):
            cells = np.flatnonzero((label == t) & (batch == b))
            if cells.size == 0:
                continue
            p = profiles[t] * bias[b]
            cdf = np.cumsum(p / p.sum())
            k = signal[cells]
            draws = np.searchsorted(cdf, rng.random(k.sum()) * cdf[-1], side="right")
            rows.append(np.repeat(cells, k))
            cols.append(np.minimum(draws, n_peaks - 1))
    rows.append(np.repeat(np.arange(n), background))
    cols.append(rng.integers(0, n_features, size=background.sum()))
    rows_, cols_ = np.concatenate(rows), np.concatenate(cols)
    counts = sp.csr_matrix(
        (np.ones(rows_.size, dtype=np.float32), (rows_, cols_)), shape=(n, n_features)
    )
    counts.sum_duplicates()

    order = rng.permutation(n)
    counts = counts[order]
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(np.asarray(type_names)[label[order]], type_names),
            "batch": pd.Categorical(
                [f"batch_{b}" for b in batch[order]], [f"batch_{b}" for b in range(n_batches)]
            ),
            "n_fragments": depth[order],
        },
        index=[f"cell_{i}" for i in range(n)],
    )
    var = pd.DataFrame(
        {"is_peak": np.r_[np.ones(n_peaks, bool), np.zeros(n_bg, bool)]},
        index=peak_names + [f"background_{j}" for j in range(n_bg)],
    )
    bulk_frame = pd.DataFrame(
        np.vstack([profiles.T, np.zeros((n_bg, n_types))]), index=var.index, columns=type_names
    )
    adata = AnnData(X=counts, obs=obs, var=var, layers={"counts": counts.copy()})
    adata.varm["bulk"] = bulk_frame
    adata.uns["simulate_atac"] = {
        "preset": preset,
        "mu": mus.tolist(),
        "sigma": sig,
        "rho": rhos.tolist(),
        "batch_types": [list(map(int, b)) for b in batch_types],
        "peak_bias": float(peak_bias),
        "seed": seed,
    }
    return adata
