"""k-nearest-neighbour smoothing of a transcriptome-wide reference."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import PCA

from .._constants import TARGET_SUM
from .._normalize import log_normalize
from .._utils import check_expression
from ..nn._graph import knn_indices


def knn_smoothing_matrix(
    counts: np.ndarray | sp.spmatrix,
    n_neighbors: int = 15,
    *,
    n_top_genes: int = 2000,
    n_comps: int = 50,
    seed: int = 0,
) -> sp.csr_matrix:
    """Row-stochastic matrix that averages each cell over its nearest cells in expression space.

    The cells' counts are normalised to 1e4 per cell and ``log1p``-transformed; the
    ``n_top_genes`` genes of highest variance are standardised and projected on ``n_comps``
    principal components, and each cell is joined to its ``n_neighbors`` nearest cells there
    (Euclidean; the cell itself included). Row ``i`` of the result has weight
    ``1 / n_neighbors`` on each of them, so ``S @ values`` is the mean of ``values`` over each
    cell's neighbourhood: the k-nearest-neighbour smoothing of Wagner et al. (2018). A single
    cell of a sparse scRNA-seq dataset holds a few counts of any one gene; the mean over cells
    with the same transcriptome-wide profile is a less noisy estimate of its expression. The
    standardised top genes are held densely (``n_cells x n_top_genes`` float64: 1.6 GB for
    100,000 cells and 2,000 genes).

    Parameters
    ----------
    counts
        Cells x genes raw counts (dense or sparse), preferably transcriptome-wide: with a
        panel of tens of genes the neighbourhoods are poorly defined.
    n_neighbors
        Cells averaged per row, the cell itself included (1: the identity).
    n_top_genes
        Genes of highest variance (after ``log1p``) that define the neighbourhoods.
    n_comps
        Principal components (fewer when there are fewer genes or cells).
    seed
        Random state of the PCA solver.

    Returns
    -------
    ``(n_cells, n_cells)`` CSR matrix, ``float32``, each row summing to 1.

    Examples
    --------
    >>> S = sf.pp.knn_smoothing_matrix(adata_ref.layers["counts"], n_neighbors=15)
    >>> smoothed = S @ adata_ref.layers["counts"]

    """
    n_neighbors = int(n_neighbors)
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be a positive integer, got {n_neighbors}.")
    X = sp.csr_matrix(counts, dtype=np.float64)
    check_expression(X, "counts", integer=False)
    n_cells, n_genes = X.shape
    if n_cells < 2 or n_genes < 2:
        raise ValueError(f"knn smoothing needs at least 2 cells and 2 genes, got {X.shape}.")
    logx = log_normalize(X, TARGET_SUM, min_library=1.0)
    mean = np.asarray(logx.mean(0)).ravel()
    var = np.asarray(logx.multiply(logx).mean(0)).ravel() - mean**2
    order = np.argsort(-var, kind="stable")[: min(n_top_genes, n_genes)]
    top = order[var[order] > 0]
    if len(top) < 2:
        raise ValueError("knn smoothing needs at least 2 genes that vary across cells.")
    dense = logx[:, top].toarray()
    dense = (dense - mean[top]) / np.sqrt(var[top])
    n_comps = max(1, min(n_comps, len(top) - 1, n_cells - 1))
    pcs = PCA(n_components=n_comps, random_state=seed).fit_transform(dense)
    k = min(n_neighbors, n_cells)
    idx, _ = knn_indices(pcs, k, include_self=True)
    weights = np.full(idx.size, 1.0 / k, dtype=np.float32)
    return sp.csr_matrix((weights, idx.ravel(), np.arange(0, idx.size + 1, k)), (n_cells, n_cells))
