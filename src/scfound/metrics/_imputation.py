"""Imputation metrics: held-out entries (SpaFormer protocol), per gene, held-out genes (stAI)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import rel_entr
from scipy.stats import rankdata

from .._normalize import library_size, log_normalize
from .._utils import check_expression, to_dense

# Entries converted to dense per block, to bound memory on large matrices.
_BLOCK_ENTRIES = 4_000_000

# A sum of squared deviations below this fraction of the sum of squares is rounding error:
# the vector is constant and its correlation undefined.
_REL_TOL = 1e-24

Matrix = np.ndarray | sp.spmatrix
GeneNames = list[str] | np.ndarray | pd.Index


def normalize_log1p(X: Matrix, target_sum: float) -> np.ndarray:
    """Scale every cell to ``target_sum`` total counts, then apply ``log1p``.

    Cells with zero total stay zero. This is the normalisation of every imputation metric of
    scfound, as a dense ``float64`` array.

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
    return log_normalize(to_dense(X, np.float64), target_sum)


def _check_target_sum(target_sum: float) -> None:
    if not (np.isfinite(target_sum) and target_sum > 0):
        raise ValueError(f"`target_sum` must be a positive number, got {target_sum!r}.")


def _as_matrix(X: Matrix) -> Matrix:
    """Array or row-sliceable sparse matrix."""
    if not sp.issparse(X):
        return np.asarray(X)
    return sp.csr_matrix(X) if X.format not in ("csr", "csc") else X


def _check_inputs(
    truth: Matrix, imputed: Matrix, mask: Matrix | None, *, counts: bool = True
) -> None:
    """Shapes agree and values are finite (and, with ``counts``, non-negative)."""
    if truth.ndim != 2:
        raise ValueError(f"`truth` must be a 2-d cells x genes matrix, got shape {truth.shape}.")
    if imputed.shape != truth.shape:
        raise ValueError(
            f"`imputed` has shape {imputed.shape} but `truth` has shape {truth.shape}."
        )
    if mask is not None and mask.shape != truth.shape:
        raise ValueError(f"`mask` has shape {mask.shape} but `truth` has shape {truth.shape}.")
    check_expression(truth, "`truth`", counts=counts)
    check_expression(imputed, "`imputed`", counts=counts)


def _gene_index(gene_names: GeneNames | None, n_vars: int) -> pd.Index:
    """Index of a per-gene result: ``gene_names``, or ``0 .. n_vars - 1``."""
    if gene_names is None:
        return pd.RangeIndex(n_vars, name="gene")
    index = pd.Index(gene_names, name="gene")
    if len(index) != n_vars:
        raise ValueError(
            f"`gene_names` has {len(index)} entries but the matrices have {n_vars} genes."
        )
    return index


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
    truth_totals = library_size(truth, np.float64)
    imputed_totals = library_size(imputed, np.float64)
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
        t = log_normalize(t, target_sum, library=truth_totals[rows])[sel]
        p = log_normalize(p, target_sum, library=imputed_totals[rows])[sel]
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
    gene_names: GeneNames | None = None,
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
    index = _gene_index(gene_names, n_vars)
    truth_totals = library_size(truth, np.float64)
    imputed_totals = library_size(imputed, np.float64)
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
        t = log_normalize(to_dense(truth[:, cols], np.float64), target_sum, library=truth_totals)
        p = log_normalize(
            to_dense(imputed[:, cols], np.float64), target_sum, library=imputed_totals
        )
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


def heldout_gene_scores(
    truth: Matrix | pd.DataFrame,
    imputed: Matrix | pd.DataFrame,
    gene_names: GeneNames | None = None,
) -> pd.DataFrame:
    """Per-gene PCC, SCC, z-scored RMSE and JSD of imputed genes, over all cells.

    The evaluation of stAI and of the benchmark of Li et al. (2022, *Nature Methods*): genes of
    a spatial dataset are held out, imputed from a reference, and each gene is compared with its
    measured values across cells. With ``t`` the ground truth and ``p`` the imputation of one gene
    over ``n`` cells:

    - ``pcc``: Pearson correlation of ``t`` and ``p``;
    - ``scc``: Spearman correlation (Pearson of the ranks, ties averaged);
    - ``rmse``: ``sqrt(mean((z(p) - z(t))**2))``, where ``z`` is the z-score over cells
      (``(x - mean(x)) / std(x)``, ``ddof=0``). It lies in ``[0, 2]`` and equals
      ``sqrt(2 - 2 * pcc)``;
    - ``jsd``: Jensen-Shannon divergence (natural log, so in ``[0, ln 2]``; the divergence, not
      its square root) between ``P = t / sum(t)`` and ``Q = p / sum(p)``, after negative values
      of either are set to 0.

    No normalisation is applied, and none is needed: PCC, SCC and RMSE do not change when a gene
    is shifted or scaled, JSD not when it is scaled, so ``truth`` can be raw counts and
    ``imputed`` on any scale (e.g. a reference's log-normalised values).

    Parameters
    ----------
    truth
        Ground truth of the genes, cells x genes (dense, sparse or a DataFrame), finite, e.g. the
        raw counts of the held-out genes.
    imputed
        Imputed values of the same genes in the same order, cells x genes, finite, on any scale;
        a :class:`~pandas.DataFrame` (such as ``adata.obsm["stai_imputed"]``) gives the gene names.
    gene_names
        Index of the result. Default: the columns of ``imputed`` (or of ``truth``) when it is a
        DataFrame, else ``0 .. n_genes - 1``.

    Returns
    -------
    DataFrame indexed by gene with columns ``'pcc'``, ``'scc'``, ``'rmse'`` and ``'jsd'``.

    A gene whose true values are constant (e.g. all zero) cannot be scored against: its
    ``pcc``, ``scc`` and ``rmse`` are NaN. A constant imputation of a varying gene has NaN
    ``pcc`` and ``scc`` but ``rmse`` 1 (its z-scores are taken as 0, the score of an
    uncorrelated imputation), so that it is not dropped from a summary over genes. ``jsd`` is
    NaN when the truth has no positive value; an imputation with no positive value is treated
    as uniform over cells, like any other constant imputation.

    Raises
    ------
    ValueError
        If the shapes differ, values are NaN or infinite, there are no cells, ``gene_names`` has
        the wrong length, or DataFrame inputs disagree on genes or cells.

    Examples
    --------
    >>> import numpy as np
    >>> import pandas as pd
    >>> from scfound.metrics import heldout_gene_scores
    >>> truth = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 3.0]])
    >>> imputed = pd.DataFrame(np.log1p(truth), columns=["Gad2", "Mbp"])
    >>> heldout_gene_scores(truth, imputed)["scc"].round(6).tolist()
    [1.0, 1.0]
    """
    index = _heldout_gene_index(truth, imputed, gene_names)
    truth, imputed = (
        x.to_numpy(dtype=np.float64) if isinstance(x, pd.DataFrame) else _as_matrix(x)
        for x in (truth, imputed)
    )
    _check_inputs(truth, imputed, None, counts=False)
    n_obs, n_vars = truth.shape
    if n_obs == 0:
        raise ValueError("`truth` has no cells; nothing to score.")
    index = _gene_index(index, n_vars)
    if sp.issparse(truth):
        truth = sp.csc_matrix(truth)
    if sp.issparse(imputed):
        imputed = sp.csc_matrix(imputed)

    out = {key: np.full(n_vars, np.nan) for key in ("pcc", "scc", "rmse", "jsd")}
    block = max(1, _BLOCK_ENTRIES // n_obs)
    for start in range(0, n_vars, block):
        cols = slice(start, min(start + block, n_vars))
        t = to_dense(truth[:, cols], np.float64)
        p = to_dense(imputed[:, cols], np.float64)
        z_t, constant_t = _zscore(t)
        z_p, constant_p = _zscore(p)
        rmse = np.sqrt(np.mean((z_p - z_t) ** 2, axis=0))
        rmse[constant_t] = np.nan
        out["rmse"][cols] = rmse
        out["pcc"][cols] = _pearson_of_zscores(z_t, z_p, constant_t | constant_p)
        del z_t, z_p
        zr_t, _ = _zscore(rankdata(t, axis=0))
        zr_p, _ = _zscore(rankdata(p, axis=0))
        out["scc"][cols] = _pearson_of_zscores(zr_t, zr_p, constant_t | constant_p)
        del zr_t, zr_p
        out["jsd"][cols] = _jensen_shannon(t, p)
    return pd.DataFrame(out, index=index)


def _heldout_gene_index(
    truth: Matrix | pd.DataFrame, imputed: Matrix | pd.DataFrame, gene_names: GeneNames | None
) -> GeneNames | None:
    """Gene names of :func:`heldout_gene_scores`, checked against DataFrame inputs."""
    frames = {
        name: x
        for name, x in (("imputed", imputed), ("truth", truth))
        if isinstance(x, pd.DataFrame)
    }
    if "imputed" in frames and "truth" in frames:
        if not imputed.columns.equals(truth.columns):
            raise ValueError(
                "the columns (genes) of `truth` and `imputed` differ; select the same genes in "
                "the same order, e.g. `imputed[truth.columns]`."
            )
        if not imputed.index.equals(truth.index):
            raise ValueError(
                "the index (cells) of `truth` and `imputed` differ; align them first, e.g. "
                "`imputed.loc[truth.index]`."
            )
    if gene_names is None:
        return next((frame.columns for frame in frames.values()), None)
    for name, frame in frames.items():
        if len(gene_names) == frame.shape[1] and not frame.columns.equals(pd.Index(gene_names)):
            raise ValueError(
                f"`gene_names` differ from the columns of `{name}`; leave `gene_names` out to "
                "use the DataFrame's columns."
            )
    return gene_names


def _zscore(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise z-scores (``ddof=0``) and a flag of constant columns, whose z-scores are 0."""
    mean = x.mean(axis=0)
    centred = x - mean
    ss = (centred * centred).sum(axis=0)
    constant = ss <= _REL_TOL * (x * x).sum(axis=0)
    scale = np.sqrt(ss / len(x))
    scale[constant] = 1.0
    centred /= scale
    centred[:, constant] = 0.0
    return centred, constant


def _pearson_of_zscores(z_t: np.ndarray, z_p: np.ndarray, undefined: np.ndarray) -> np.ndarray:
    """Column-wise Pearson correlation from z-scores; NaN where ``undefined``."""
    r = np.clip(np.mean(z_t * z_p, axis=0), -1.0, 1.0)
    r[undefined] = np.nan
    return r


def _jensen_shannon(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Column-wise JS divergence (natural log) of the sum-normalised, 0-clipped columns."""
    n_obs = len(t)

    def distribution(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.clip(x, 0.0, None)
        total = x.sum(axis=0)
        empty = total <= 0
        dist = np.divide(x, total, out=np.full_like(x, 1.0 / n_obs), where=~empty)
        return dist, empty

    P, empty_t = distribution(t)
    Q, _ = distribution(p)
    M = 0.5 * (P + Q)
    jsd = 0.5 * (rel_entr(P, M).sum(axis=0) + rel_entr(Q, M).sum(axis=0))
    jsd = np.clip(jsd, 0.0, np.log(2.0))
    jsd[empty_t] = np.nan
    return jsd
