"""Scores of multi-omics tasks: modality prediction (NeurIPS 2021 competition definitions)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._imputation import heldout_gene_scores

Matrix = np.ndarray | sp.spmatrix | pd.DataFrame


def _dense(X: Matrix, name: str) -> np.ndarray:
    if isinstance(X, pd.DataFrame):
        X = X.to_numpy()
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    X = X.astype(np.float64)
    if X.ndim != 2:
        raise ValueError(f"`{name}` must be a cells x features matrix, got shape {X.shape}.")
    if not np.isfinite(X).all():
        raise ValueError(f"`{name}` has NaN or infinite values.")
    return X


def modality_prediction_scores(truth: Matrix, predicted: Matrix) -> dict[str, float]:
    """How well a predicted modality matches the measured one (both on the same scale).

    - ``rmse``: root mean squared error over all entries, the competition's score
      (``sqrt(mean((Y - Y_hat) ** 2))``, thesis Eq. 2.15);
    - ``mae``: mean absolute error over all entries;
    - ``pearson`` / ``spearman``: Pearson and Spearman correlation of each feature over cells
      (:func:`heldout_gene_scores`), averaged over the features where it is defined (NaN
      when every predicted feature is constant, e.g. a mean predictor);
    - ``pearson_cell``: Pearson correlation of each cell over features, averaged over cells
      (scMoFormer's "Corr"; cells with constant values are skipped).

    Parameters
    ----------
    truth
        Measured values, cells x features, on the scale of ``predicted`` (e.g. CLR of the
        protein counts for ``obsm["scmognn_adt"]``).
    predicted
        Predicted values of the same cells and features in the same order; a DataFrame's
        columns are checked against ``truth``'s when both are DataFrames.

    Returns
    -------
    ``{"rmse", "mae", "pearson", "spearman", "pearson_cell"}``.

    Raises
    ------
    ValueError
        If the shapes differ, values are not finite, or there are no cells.

    Examples
    --------
    >>> import numpy as np
    >>> from scfound.metrics import modality_prediction_scores
    >>> y = np.array([[0.0, 1.0], [1.0, 3.0], [2.0, 2.0]])
    >>> modality_prediction_scores(y, y + 1)["rmse"]
    1.0
    """
    if isinstance(truth, pd.DataFrame) and isinstance(predicted, pd.DataFrame):
        if not truth.columns.equals(predicted.columns):
            raise ValueError(
                "the columns (features) of `truth` and `predicted` differ; select the same "
                "features in the same order, e.g. `predicted[truth.columns]`."
            )
    t, p = _dense(truth, "truth"), _dense(predicted, "predicted")
    if t.shape != p.shape:
        raise ValueError(
            f"`truth` has shape {t.shape} and `predicted` {p.shape}; they must be the same "
            "cells x features."
        )
    if t.shape[0] == 0:
        raise ValueError("`truth` has no cells; nothing to score.")
    per_feature = heldout_gene_scores(t, p)
    tc = t - t.mean(1, keepdims=True)
    pc = p - p.mean(1, keepdims=True)
    denom = np.sqrt((tc * tc).sum(1) * (pc * pc).sum(1))
    ok = denom > 0
    cell_r = (tc * pc).sum(1)[ok] / denom[ok]
    return {
        "rmse": float(np.sqrt(np.mean((t - p) ** 2))),
        "mae": float(np.mean(np.abs(t - p))),
        "pearson": _nanmean(per_feature["pcc"]),
        "spearman": _nanmean(per_feature["scc"]),
        "pearson_cell": float(cell_r.mean()) if ok.any() else float("nan"),
    }


def _nanmean(values: pd.Series) -> float:
    """Mean of the defined values; NaN (without a warning) when there is none."""
    defined = values.dropna()
    return float(defined.mean()) if len(defined) else float("nan")


def matching_score(matching: Matrix, truth: Matrix | np.ndarray) -> float:
    """The competition's modality matching score: probability mass on the true pairs, over n.

    ``score = sum_{(i, j) true pair} P[i, j] / n`` with ``n`` the rows of ``P`` (thesis §2.4.2;
    ``trace(P) / n`` when the true partner of cell ``i`` is column ``i``). 1 for a perfect
    matching, about ``1 / m`` for a uniform guess over ``m`` cells.

    Parameters
    ----------
    matching
        ``(n, m)`` matching probabilities (e.g. ``adata.obsm["scmognn_matching"]``), each row
        summing to at most 1.
    truth
        The true pairs: a length-``n`` integer array with the column of each row's partner
        (-1: none), or an ``(n, m)`` 0/1 matrix.

    Returns
    -------
    The score in ``[0, 1]``.

    Raises
    ------
    ValueError
        If shapes do not fit, indices are out of range, or values are negative or not finite.

    Examples
    --------
    >>> import numpy as np
    >>> from scfound.metrics import matching_score
    >>> matching_score(np.array([[0.5, 0.5], [0.0, 1.0]]), np.array([0, 1]))
    0.75
    """
    P = sp.csr_matrix(matching.to_numpy() if isinstance(matching, pd.DataFrame) else matching)
    P = P.astype(np.float64)
    n, m = P.shape
    if n == 0:
        raise ValueError("`matching` has no rows; nothing to score.")
    if not np.isfinite(P.data).all() or (P.data < 0).any():
        raise ValueError("`matching` must hold finite, non-negative probabilities.")
    if isinstance(truth, np.ndarray | list | pd.Series) and np.ndim(truth) == 1:
        partner = np.asarray(truth)
        if not np.issubdtype(partner.dtype, np.integer):
            raise ValueError(f"`truth` as a 1-D array must hold integers, got {partner.dtype}.")
        if len(partner) != n:
            raise ValueError(f"`truth` has {len(partner)} entries; `matching` has {n} rows.")
        if (partner >= m).any() or (partner < -1).any():
            raise ValueError(f"`truth` indices must lie in [-1, {m - 1}] (-1: no partner).")
        rows = np.flatnonzero(partner >= 0)
        mass = np.asarray(P[rows, partner[rows]]).ravel().sum()
        return float(mass / n)
    T = sp.csr_matrix(_dense(truth, "truth") if not sp.issparse(truth) else truth)
    if T.shape != P.shape:
        raise ValueError(f"`truth` has shape {T.shape}, `matching` {P.shape}.")
    return float(P.multiply(T > 0).sum() / n)
