"""Synthetic paired two-modality counts (RNA + proteins or RNA + chromatin accessibility)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from mudata import MuData

from ._synthetic import _check_positive_int

#: cells generated per chunk, to bound memory for large datasets
_CHUNK_CELLS = 5_000
#: modality name of the second modality of each kind
_SECOND = {"protein": "adt", "atac": "atac"}


def synthetic_multiome(
    n_cells: int = 1000,
    n_genes: int = 200,
    n_features: int = 20,
    kind: str = "protein",
    n_types: int = 8,
    seed: int = 0,
    *,
    n_batches: int = 1,
    mean_library_size: float = 1500.0,
) -> MuData:
    """Simulate paired RNA and protein (CITE-seq) or RNA and ATAC (multiome) counts.

    Every cell has a type (uniform over ``n_types``) and a continuous state, both shared by the
    two modalities, so that one modality predicts the other. RNA: each type has log-normal gene
    means with 10 % of the genes as 4-fold markers, modulated by the state; counts are Poisson
    around them times a log-normal library size (mean ``mean_library_size``), stored sparse.
    Proteins (``kind="protein"``): each protein is driven by a random linear combination of the
    log gene means (as surface proteins follow their transcripts), counts are
    negative-binomial-like (Poisson-gamma) with a background, dense. Peaks (``kind="atac"``):
    each type opens its own set of 20 % of the peaks (probability 0.25 of a read) and all others
    have a background (probability 0.02), scaled by the cell's depth; counts 0/1/2, sparse.

    Data are generated in chunks of cells, so that 100,000 cells x 2,000 genes take about the
    memory of the sparse result.

    Parameters
    ----------
    n_cells
        Number of cells.
    n_genes
        Genes of the ``"rna"`` modality.
    n_features
        Proteins or peaks of the second modality.
    kind
        ``"protein"`` (modality ``"adt"``) or ``"atac"`` (modality ``"atac"``).
    n_types
        Number of cell types.
    seed
        Random seed; the same arguments give the same data.
    n_batches
        Batches (``obs["batch"]``, ``"b0"``, ``"b1"``, ...) with their own depth factor.
    mean_library_size
        Mean RNA counts per cell.

    Returns
    -------
    MuData with modalities ``"rna"`` and ``"adt"`` (or ``"atac"``), the same cells in both; raw
    counts in ``.X`` and ``layers["counts"]`` of each; ``obs["cell_type"]`` and ``obs["batch"]``
    in every modality and in the MuData.

    Examples
    --------
    >>> mdata = sf.datasets.synthetic_multiome(2000, 500, 20, kind="protein")
    >>> mdata["adt"].shape
    (2000, 20)
    """
    _check_positive_int(
        n_cells=n_cells, n_genes=n_genes, n_features=n_features, n_types=n_types,
        n_batches=n_batches,
    )  # fmt: skip
    if kind not in _SECOND:
        raise ValueError(f"`kind` must be one of {list(_SECOND)}, got {kind!r}.")
    if not mean_library_size > 0:
        raise ValueError(f"`mean_library_size` must be positive, got {mean_library_size!r}.")
    rng = np.random.default_rng(seed)
    # per-type programmes (genes), state loadings, and the second modality's parameters
    base = rng.normal(0.0, 1.0, n_genes)
    markers = rng.random((n_types, n_genes)) < 0.1
    log_mean = base[None] + np.log(4.0) * markers
    state_loading = rng.normal(0.0, 0.3, n_genes)
    if kind == "protein":
        loading = rng.normal(0.0, 1.0, (n_genes, n_features)) / np.sqrt(n_genes)
        background = rng.gamma(2.0, 5.0, n_features)
    else:
        open_sets = rng.random((n_types, n_features)) < 0.2
    types = rng.integers(0, n_types, n_cells)
    batches = rng.integers(0, n_batches, n_cells)
    batch_depth = rng.lognormal(0.0, 0.2, n_batches)
    rna_parts, other_parts = [], []
    for start in range(0, n_cells, _CHUNK_CELLS):
        stop = min(start + _CHUNK_CELLS, n_cells)
        t = types[start:stop]
        state = rng.normal(0.0, 1.0, stop - start)
        depth = rng.lognormal(0.0, 0.3, stop - start) * batch_depth[batches[start:stop]]
        logits = log_mean[t] + state[:, None] * state_loading[None]
        expr = np.exp(logits - logits.max(1, keepdims=True))
        expr /= expr.sum(1, keepdims=True)
        rna = rng.poisson(expr * (mean_library_size * depth)[:, None]).astype(np.float32)
        rna_parts.append(sp.csr_matrix(rna))
        if kind == "protein":
            level = np.exp(1.5 * np.tanh((logits - base[None]) @ loading))
            mu = (background[None] + 20.0 * level) * depth[:, None]
            other = rng.poisson(rng.gamma(5.0, mu / 5.0)).astype(np.float32)
            other_parts.append(other)
        else:
            p = np.where(open_sets[t], 0.25, 0.02) * np.minimum(depth, 3.0)[:, None]
            other = rng.binomial(2, np.minimum(p, 1.0) / 2).astype(np.float32)
            other_parts.append(sp.csr_matrix(other))
        del expr, rna, logits
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type{i}" for i in types]),
            "batch": pd.Categorical([f"b{i}" for i in batches]),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    second = _SECOND[kind]
    prefix = "P" if kind == "protein" else "peak"
    rna_x = sp.vstack(rna_parts).tocsr()
    other_x = np.vstack(other_parts) if kind == "protein" else sp.vstack(other_parts).tocsr()
    mods = {}
    for name, X, names in (
        ("rna", rna_x, [f"G{i}" for i in range(n_genes)]),
        (second, other_x, [f"{prefix}{i}" for i in range(n_features)]),
    ):
        adata = AnnData(X, obs=obs.copy(), var=pd.DataFrame(index=names))
        adata.layers["counts"] = X
        mods[name] = adata
    mdata = MuData(mods)
    mdata.obs["cell_type"] = obs["cell_type"]
    mdata.obs["batch"] = obs["batch"]
    return mdata
