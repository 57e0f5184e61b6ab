"""Matching probabilities between two sets of cells from their distances in one space.

Shared by the methods of :func:`scfound.tl.match_modalities`: a method maps both sets of cells
into one space (e.g. the predicted and the measured values of one modality); this module turns
the squared distances into a sparse, row-stochastic matrix, optionally within batches and with a
Hungarian (one-to-one) refinement.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp

#: rows of the distance matrix computed at once
_BLOCK = 1024


def _logits(a: np.ndarray, b: np.ndarray, scale: float) -> np.ndarray:
    """``-||a_i - b_j||^2 / scale`` for every pair (rows of ``a`` x rows of ``b``)."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return -np.maximum(d2, 0.0) / scale


def soft_matching(
    a: np.ndarray,
    b: np.ndarray,
    *,
    scale: float,
    top_k: int = 1000,
    batches: tuple[np.ndarray, np.ndarray] | None = None,
    hungarian: bool = False,
) -> sp.csr_matrix:
    """Row-stochastic matching probabilities ``P[i, j]`` of the cells of ``a`` to those of ``b``.

    ``P[i, j]`` is the softmax over ``j`` of ``-||a_i - b_j||^2 / scale`` (a Gaussian likelihood
    with variance ``scale / 2`` per unit of squared distance), truncated to the ``top_k`` largest
    entries of each row and renormalised, so that every row sums to 1.

    Parameters
    ----------
    a, b
        ``(n, d)`` and ``(m, d)`` coordinates of the two sets of cells in one space.
    scale
        Positive temperature of the softmax.
    top_k
        Non-zeros kept per row (the competition allows 1,000).
    batches
        Batch labels of the cells of ``a`` and of ``b``: a cell is only matched to cells of its
        own batch.
    hungarian
        Refine each batch with a one-to-one assignment maximising the total log-probability
        (:func:`scipy.optimize.linear_sum_assignment`): assigned rows become one-hot; rows left
        without a partner (more cells in ``a`` than in ``b``) keep their soft probabilities.

    Returns
    -------
    ``(n, m)`` CSR matrix, at most ``top_k`` non-zeros per row, rows summing to 1.

    Raises
    ------
    ValueError
        If a batch of ``a`` has no cell in ``b``, ``scale`` is not positive or ``top_k < 1``.
    """
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}.")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}.")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n, m = a.shape[0], b.shape[0]
    if batches is None:
        groups = [(np.arange(n), np.arange(m))]
    else:
        batch_a, batch_b = (np.asarray(x).astype(str) for x in batches)
        groups = [
            (np.flatnonzero(batch_a == value), np.flatnonzero(batch_b == value))
            for value in np.unique(batch_a)
        ]
    rows, cols, vals = [], [], []
    for rows_a, rows_b in groups:
        if len(rows_b) == 0:
            value = str(batches[0][rows_a[0]])
            raise ValueError(
                f"batch {value!r} has {len(rows_a)} cell(s) to match but none among the other "
                "cells: batch-wise matching needs every batch in both sets."
            )
        k = min(top_k, len(rows_b))
        is_assigned = np.zeros(len(rows_a), dtype=bool)
        if hungarian:
            r, c = linear_sum_assignment(-_logits(a[rows_a], b[rows_b], scale))
            is_assigned[r] = True
            rows.append(rows_a[r])
            cols.append(rows_b[c])
            vals.append(np.ones(len(r)))
        for start in range(0, len(rows_a), _BLOCK):
            block = np.arange(start, min(start + _BLOCK, len(rows_a)))
            block = block[~is_assigned[block]]
            if len(block) == 0:
                continue
            logits = _logits(a[rows_a[block]], b[rows_b], scale)
            top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
            kept = np.take_along_axis(logits, top, 1)
            prob = np.exp(kept - logsumexp(kept, axis=1, keepdims=True))
            rows.append(np.repeat(rows_a[block], k))
            cols.append(rows_b[top].ravel())
            vals.append(prob.ravel())
    if not rows:
        return sp.csr_matrix((n, m), dtype=np.float32)
    out = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n, m),
        dtype=np.float32,
    )
    out.eliminate_zeros()
    out.sort_indices()
    return out
