"""Hold-out masks for benchmarking imputation: the masked-entry evaluation protocol."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from scfound._validate import check_anndata, check_cells_and_genes, check_key_added

from .._utils import check_expression, get_matrix, layer_name, record

# Rows drawn per block, to bound the memory of the uniform draws.
_BLOCK_ENTRIES = 4_000_000


def draw_holdout_mask(
    X: np.ndarray | sp.spmatrix,
    fraction: float,
    rng: np.random.Generator | int | None,
    *,
    eligible: np.ndarray | None = None,
) -> np.ndarray:
    """Draw a random hold-out mask over the entries of a cells x genes matrix.

    Each entry (zeros included) is held out independently with probability ``fraction``
    (only among the ``eligible`` entries when given). Then no cell is left empty: a cell with
    at least one non-zero count whose non-zero entries would all be held out keeps all its
    entries (its mask row is cleared). This is the protocol of SpaFormer's masked-entry
    imputation benchmark.

    Parameters
    ----------
    X
        Cells x genes matrix (dense or sparse); only its non-zero pattern is used.
    fraction
        Probability that an entry is held out, in ``(0, 1)``.
    rng
        Random generator, or a seed for :func:`numpy.random.default_rng`.
    eligible
        Boolean ``X``-shaped array; only ``True`` entries can be held out.

    Returns
    -------
    Dense boolean array of ``X``'s shape, ``True`` where the entry is held out.

    Examples
    --------
    >>> import numpy as np
    >>> from scfound.pp import draw_holdout_mask
    >>> X = np.random.default_rng(0).poisson(2.0, size=(100, 20))
    >>> mask = draw_holdout_mask(X, 0.3, np.random.default_rng(0))
    >>> float(round(mask.mean(), 1))
    0.3
    """
    if not 0 < fraction < 1:
        raise ValueError(f"`fraction` must be in (0, 1), got {fraction!r}.")
    if X.ndim != 2:
        raise ValueError(f"`X` must be a 2-d cells x genes matrix, got shape {X.shape}.")
    if eligible is not None:
        eligible = np.asarray(eligible)
        if eligible.shape != X.shape or eligible.dtype != bool:
            raise ValueError(
                f"`eligible` must be a boolean array of shape {X.shape}, got "
                f"{eligible.dtype} array of shape {eligible.shape}."
            )
    rng = np.random.default_rng(rng)
    n_obs, n_vars = X.shape
    mask = np.empty((n_obs, n_vars), dtype=bool)
    block = max(1, _BLOCK_ENTRIES // max(n_vars, 1))
    for start in range(0, n_obs, block):
        mask[start : start + block] = rng.random((min(block, n_obs - start), n_vars)) < fraction
    if eligible is not None:
        mask &= eligible

    nonzero = X != 0
    if sp.issparse(nonzero):
        nonzero = sp.csr_matrix(nonzero)
        has_counts = nonzero.getnnz(axis=1) > 0
        kept_counts = np.asarray(nonzero.multiply(~mask).sum(axis=1)).ravel() > 0
    else:
        nonzero = np.asarray(nonzero)
        has_counts = nonzero.any(axis=1)
        kept_counts = (nonzero & ~mask).any(axis=1)
    mask[has_counts & ~kept_counts] = False
    return mask


def mask_entries(
    adata: AnnData,
    fraction: float = 0.3,
    *,
    layer: str | None = None,
    seed: int = 0,
    key_added: str = "heldout",
    copy: bool = False,
) -> AnnData | None:
    """Hold out random entries of the count matrix, for benchmarking imputation.

    The masked-entry protocol of SpaFormer: a fraction of all entries (zeros included) is
    held out at random, keeping at least one non-zero count in every cell that has one (see
    :func:`draw_holdout_mask`). A model is then trained on ``layers[f'{key_added}_counts']``
    and scored on the held-out entries against the untouched counts, e.g. with
    :func:`scfound.metrics.imputation_scores`.

    Parameters
    ----------
    adata
        Annotated data matrix.
    fraction
        Probability that an entry is held out, in ``(0, 1)``.
    layer
        Layer with the counts; ``None`` uses ``adata.X``.
    seed
        Random seed of the mask.
    key_added
        Name of the mask layer; the masked counts go to ``f'{key_added}_counts'``.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``. Sets

    - ``adata.layers[key_added]``: dense boolean mask, ``True`` = held out;
    - ``adata.layers[f'{key_added}_counts']``: the counts with held-out entries set to 0
      (``float32``, same sparse format as the input, explicit zeros removed);
    - ``adata.uns['scfound']['mask_entries'][key_added]``: the parameters and the number of held-out
      entries.

    The input layer is not modified.

    Examples
    --------
    >>> import scfound
    >>> adata = scfound.datasets.synthetic_spatial(n_cells=300, n_genes=50)
    >>> scfound.pp.mask_entries(adata, 0.3, layer="counts")
    >>> adata.layers["heldout"].dtype
    dtype('bool')
    """
    check_anndata(adata)
    if not isinstance(fraction, float | int | np.floating) or not 0 < fraction < 1:
        raise ValueError(f"`fraction` must be in (0, 1), got {fraction!r}.")
    check_cells_and_genes(adata)
    X = get_matrix(adata, layer)
    check_expression(X, layer_name(layer))
    masked_key = f"{key_added}_counts"
    places = [("layers", key_added), ("layers", masked_key)]
    check_key_added(adata, "pp.mask_entries", key_added, places, [("layers", layer)])

    mask = draw_holdout_mask(X, fraction, np.random.default_rng(seed))
    if sp.issparse(X):
        masked = sp.csr_matrix(X, dtype=np.float32, copy=True)
        rows = np.repeat(np.arange(masked.shape[0]), np.diff(masked.indptr))
        masked.data[mask[rows, masked.indices]] = 0
        masked.eliminate_zeros()
        masked = masked.asformat(X.format)
    else:
        masked = np.where(mask, np.float32(0), np.asarray(X, dtype=np.float32))

    if copy:
        adata = adata.copy()
    adata.layers[key_added] = mask
    adata.layers[masked_key] = masked
    record(
        adata,
        "mask_entries",
        key_added,
        {
            "fraction": float(fraction),
            "layer": layer,
            "seed": seed,
            "key_added": key_added,
            "n_heldout": int(mask.sum()),
            "n_entries": int(mask.size),
        },
    )
    return adata if copy else None
