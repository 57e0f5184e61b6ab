"""Imputation metrics on held-out entries (SpaFormer protocol) and per gene."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import rankdata

from .._utils import check_expression, to_dense

# Entries converted to dense per block, to bound memory on large matrices.
_BLOCK_ENTRIES = 4_000_000

# A sum of squared deviations below this fraction of the sum of squares is rounding error:
# the vector is constant and its correlation undefined.
_REL_TOL = 1e-24

Matrix = np.ndarray | sp.spmatrix


def normalize_log1p(X: Matrix, target_sum: float) -> np.ndarray:
    """Scale every cell to ``target_sum`` total counts, then apply ``log1p``.

    Cells with zero total stay zero.

    Parameters
    ----------
    X
        Cells x genes matrix (dense or sparse), non-negative.
    target_sum
        Total of every cell after scaling.

    Returns
    -------
    Dense ``float64`` array of ``X``'s shape.

    Examples
    --------
    >>> import numpy as np
    >>> from scfound.metrics import normalize_log1p
    >>> normalize_log1p(np.array([[1.0, 3.0], [0.0, 0.0]]), 4.0)
    array([[0.69314718, 1.38629436],
           [0.        , 0.        ]])
    """
    _check_target_sum(target_sum)
    X = to_dense(X, np.float64)
    return _normalize_rows(X, X.sum(axis=1), target_sum)


def _normalize_rows(X: np.ndarray, totals: np.ndarray, target_sum: float) -> np.ndarray:
    """``log1p`` of dense ``X`` scaled row-wise by ``target_sum / totals`` (0 for empty rows)."""
    scale = np.divide(
        target_sum, totals, out=np.zeros(len(totals), dtype=np.float64), where=totals > 0
    )
    return np.log1p(X * scale[:, None])


def _check_target_sum(target_sum: float) -> None:
    if not (np.isfinite(target_sum) and target_sum > 0):
        raise ValueError(f"`target_sum` must be a positive number, got {target_sum!r}.")


def _row_totals(X: Matrix) -> np.ndarray:
    return np.asarray(X.sum(axis=1), dtype=np.float64).ravel()


def _as_matrix(X: Matrix) -> Matrix:
    """Array or row-sliceable sparse matrix."""
    if not sp.issparse(X):
        return np.asarray(X)
    return sp.csr_matrix(X) if X.format not in ("csr", "csc") else X


def _check_inputs(truth: Matrix, imputed: Matrix, mask: Matrix | None) -> None:
    if truth.ndim != 2:
        raise ValueError(f"`truth` must be a 2-d cells x genes matrix, got shape {truth.shape}.")
    if imputed.shape != truth.shape:
        raise ValueError(
            f"`imputed` has shape {imputed.shape} but `truth` has shape {truth.shape}."
        )
    if mask is not None and mask.shape != truth.shape:
        raise ValueError(f"`mask` has shape {mask.shape} but `truth` has shape {truth.shape}.")
    check_expression(truth, "`truth`")
    check_expression(imputed, "`imputed`")


def _as_mask(mask: Matrix) -> np.ndarray | sp.csr_matrix:
    if sp.issparse(mask):
        return sp.csr_matrix(mask, dtype=bool)
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise ValueError(f"`mask` must be boolean (True = held out), got dtype {mask.dtype}.")
    return mask


def _default_target_sum(truth_totals: np.ndarray, target_sum: float | None) -> float:
    if target_sum is None:
        target_sum = float(np.median(truth_totals))
        if not target_sum > 0:
            raise ValueError(
                "the median total count of `truth` is 0; pass a positive `target_sum`."
            )
    _check_target_sum(target_sum)
    return float(target_sum)


def imputation_scores(
    truth: Matrix,
    imputed: Matrix,
    mask: Matrix,
    *,
    target_sum: float | None = None,
) -> dict[str, float]:
    """Score an imputation on held-out entries: RMSE, Pearson and cosine similarity.

    The evaluation protocol of SpaFormer: ``truth`` and ``imputed`` are each normalised per
    cell by their own totals to ``target_sum`` and log1p-transformed (see
    :func:`normalize_log1p`); the held-out entries of all cells and genes are then pooled into
    one vector per matrix, ``t`` and ``p``, and compared.

    Parameters
    ----------
    truth
        Full ground-truth counts, cells x genes (dense or sparse).
    imputed
        A method's output on the count scale, same shape, finite and non-negative.
    mask
        Boolean array of the same shape, ``True`` at held-out entries (e.g. the layer written
        by :func:`scfound.pp.mask_entries`).
    target_sum
        Per-cell total after normalisation; default the median total of ``truth``.

    Returns
    -------
    Dictionary with ``'rmse'`` (``sqrt(mean((p - t)**2))``), ``'pearson'`` (Pearson
    correlation of ``p`` and ``t``, NaN when either is constant) and ``'cosine'``
    (``sum(p * t) / sqrt(sum(p**2) * sum(t**2))``, NaN when either is all zero).

    Examples
    --------
    >>> import numpy as np
    >>> from scfound.metrics import imputation_scores
    >>> X = np.random.default_rng(0).poisson(3.0, size=(50, 10)).astype(float)
    >>> mask = np.random.default_rng(1).random(X.shape) < 0.3
    >>> imputation_scores(X, X, mask)["rmse"]
    0.0
    """
    truth, imputed, mask = _as_matrix(truth), _as_matrix(imputed), _as_mask(mask)
    _check_inputs(truth, imputed, mask)
    n_masked = int(mask.sum())
    if n_masked == 0:
        raise ValueError("`mask` holds no True entries; nothing to score.")
    truth_totals = _row_totals(truth)
    imputed_totals = _row_totals(imputed)
    target_sum = _default_target_sum(truth_totals, target_sum)

    # Streamed over row blocks; per-block moments merged with Chan et al.'s formulas.
    n = 0
    mean_t = mean_p = m2_t = m2_p = co = 0.0
    sq_err = dot = sq_t = sq_p = 0.0
    block = max(1, _BLOCK_ENTRIES // max(truth.shape[1], 1))
    for start in range(0, truth.shape[0], block):
        rows = slice(start, start + block)
        sel = to_dense(mask[rows], bool)
        if not sel.any():
            continue
        t = to_dense(truth[rows], np.float64)
        p = to_dense(imputed[rows], np.float64)
        t = _normalize_rows(t, truth_totals[rows], target_sum)[sel]
        p = _normalize_rows(p, imputed_totals[rows], target_sum)[sel]
        sq_err += float(np.sum((p - t) ** 2))
        dot += float(p @ t)
        sq_t += float(t @ t)
        sq_p += float(p @ p)

        n_b = len(t)
        mt_b, mp_b = t.mean(), p.mean()
        dt, dp = t - mt_b, p - mp_b
        m2t_b, m2p_b, co_b = dt @ dt, dp @ dp, dt @ dp
        n_new = n + n_b
        delta_t, delta_p = mt_b - mean_t, mp_b - mean_p
        m2_t += m2t_b + delta_t**2 * n * n_b / n_new
        m2_p += m2p_b + delta_p**2 * n * n_b / n_new
        co += co_b + delta_t * delta_p * n * n_b / n_new
        mean_t += delta_t * n_b / n_new
        mean_p += delta_p * n_b / n_new
        n = n_new

    with np.errstate(divide="ignore", invalid="ignore"):
        constant = m2_t <= _REL_TOL * sq_t or m2_p <= _REL_TOL * sq_p
        pearson = np.nan if constant else min(max(co / np.sqrt(m2_t * m2_p), -1.0), 1.0)
        cosine = dot / np.sqrt(sq_t * sq_p) if sq_t > 0 and sq_p > 0 else np.nan
    return {
        "rmse": float(np.sqrt(sq_err / n)),
        "pearson": float(pearson),
        "cosine": float(cosine),
    }


def per_gene_scores(
    truth: Matrix,
    imputed: Matrix,
    mask: Matrix | None = None,
    *,
    target_sum: float | None = None,
    gene_names: list[str] | np.ndarray | pd.Index | None = None,
) -> pd.DataFrame:
    """Per-gene Pearson, Spearman and RMSE between imputed and true expression.

    Both matrices are normalised per cell by their own totals to ``target_sum`` and
    log1p-transformed, as in :func:`imputation_scores`. Each gene is then scored over its
    held-out entries (``mask``) or over all cells (``mask=None``).

    Parameters
    ----------
    truth
        Ground-truth counts, cells x genes (dense or sparse).
    imputed
        A method's output on the count scale, same shape, finite and non-negative.
    mask
        Optional boolean array of the same shape, ``True`` at the entries to score.
    target_sum
        Per-cell total after normalisation; default the median total of ``truth``.
    gene_names
        Index of the result; default ``0 .. n_genes - 1``.

    Returns
    -------
    DataFrame indexed by gene with columns ``'pcc'`` (Pearson), ``'scc'`` (Spearman),
    ``'rmse'`` and ``'n'`` (number of entries scored). Correlations are NaN for genes whose
    scored values are constant in either matrix or that have fewer than two entries; RMSE is
    NaN for genes with no entry.

    Examples
    --------
    >>> import numpy as np
    >>> from scfound.metrics import per_gene_scores
    >>> X = np.random.default_rng(0).poisson(3.0, size=(50, 4)).astype(float)
    >>> per_gene_scores(X, X)["pcc"].round(6).tolist()
    [1.0, 1.0, 1.0, 1.0]
    """
    truth, imputed = _as_matrix(truth), _as_matrix(imputed)
    if mask is not None:
        mask = _as_mask(mask)
    _check_inputs(truth, imputed, mask)
    n_obs, n_vars = truth.shape
    if gene_names is None:
        index = pd.RangeIndex(n_vars, name="gene")
    else:
        index = pd.Index(gene_names, name="gene")
        if len(index) != n_vars:
            raise ValueError(
                f"`gene_names` has {len(index)} entries but the matrices have {n_vars} genes."
            )
    truth_totals = _row_totals(truth)
    imputed_totals = _row_totals(imputed)
    target_sum = _default_target_sum(truth_totals, target_sum)
    if sp.issparse(truth):
        truth = sp.csc_matrix(truth)
    if sp.issparse(imputed):
        imputed = sp.csc_matrix(imputed)
    if mask is not None and sp.issparse(mask):
        mask = sp.csc_matrix(mask)

    out = {key: np.full(n_vars, np.nan) for key in ("pcc", "scc", "rmse")}
    out["n"] = np.zeros(n_vars, dtype=np.int64)
    block = max(1, _BLOCK_ENTRIES // max(n_obs, 1))
    for start in range(0, n_vars, block):
        cols = slice(start, min(start + block, n_vars))
        t = _normalize_rows(to_dense(truth[:, cols], np.float64), truth_totals, target_sum)
        p = _normalize_rows(to_dense(imputed[:, cols], np.float64), imputed_totals, target_sum)
        sel = np.ones_like(t, dtype=bool) if mask is None else to_dense(mask[:, cols], bool)
        n = sel.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            out["rmse"][cols] = np.sqrt(np.where(sel, (p - t) ** 2, 0.0).sum(axis=0) / n)
            out["pcc"][cols] = _masked_pearson(t, p, sel)
            t_rank = rankdata(np.where(sel, t, np.nan), axis=0, nan_policy="omit")
            p_rank = rankdata(np.where(sel, p, np.nan), axis=0, nan_policy="omit")
            out["scc"][cols] = _masked_pearson(np.nan_to_num(t_rank), np.nan_to_num(p_rank), sel)
        out["n"][cols] = n
    return pd.DataFrame(out, index=index)


def _masked_pearson(t: np.ndarray, p: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """Column-wise Pearson correlation over the ``sel`` entries (NaN if constant or n < 2)."""
    n = sel.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_t = np.where(sel, t, 0.0).sum(axis=0) / n
        mean_p = np.where(sel, p, 0.0).sum(axis=0) / n
        dt = np.where(sel, t - mean_t, 0.0)
        dp = np.where(sel, p - mean_p, 0.0)
        var_t = (dt * dt).sum(axis=0)
        var_p = (dp * dp).sum(axis=0)
        r = (dt * dp).sum(axis=0) / np.sqrt(var_t * var_p)
    constant_t = var_t <= _REL_TOL * (np.where(sel, t, 0.0) ** 2).sum(axis=0)
    constant_p = var_p <= _REL_TOL * (np.where(sel, p, 0.0) ** 2).sum(axis=0)
    r[(n < 2) | constant_t | constant_p] = np.nan
    return np.clip(r, -1.0, 1.0)
