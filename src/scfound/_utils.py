"""Input checks and bookkeeping shared by every ``pp``/``tl`` function and model.

One definition of each check, so that every public function raises the same clear error for the
same bad input (missing keys, non-finite values, negative counts, bad coordinates).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

UNS_KEY = "scfound"

#: the largest finite ``float32``; models compute in ``float32``
FLOAT32_MAX = float(np.finfo(np.float32).max)


def get_matrix(adata: AnnData, layer: str | None = None) -> np.ndarray | sp.spmatrix:
    """Return ``adata.layers[layer]`` (or ``adata.X`` when ``layer`` is None) with a clear error.

    Parameters
    ----------
    adata
        Annotated data matrix.
    layer
        Layer name, or ``None`` for ``.X``.

    Returns
    -------
    The matrix itself (not a copy).
    """
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty; pass `layer=` naming a layer with the counts.")
        return adata.X
    if layer not in adata.layers:
        raise KeyError(
            f"layer {layer!r} not found in adata.layers (available: {list(adata.layers.keys())})."
        )
    return adata.layers[layer]


def to_dense(X: np.ndarray | sp.spmatrix, dtype: type = np.float32) -> np.ndarray:
    """Dense ``numpy`` copy of a dense or sparse matrix in ``dtype``."""
    if sp.issparse(X):
        return X.toarray().astype(dtype, copy=False)
    return np.asarray(X, dtype=dtype)


def check_expression(
    X: np.ndarray | sp.spmatrix, name: str, *, counts: bool = True, integer: bool = False
) -> None:
    """Raise if ``X`` holds NaN/inf, values beyond float32, negative or non-integer values.

    Models compute in ``float32``: a finite ``float64`` value above the largest ``float32``
    (about 3.4e38) would become infinite there, so it is refused like an infinite one.

    Parameters
    ----------
    X
        Matrix to check (dense or sparse).
    name
        How the matrix is named in the error, e.g. ``"adata.layers['counts']"``.
    counts
        Require non-negative values.
    integer
        Require integer values (for count likelihoods such as ZINB).
    """
    if not (sp.issparse(X) or isinstance(X, np.ndarray)) and hasattr(X, "shape"):
        # on-disk (backed) matrix: check it block by block without loading it
        step = 10_000
        for start in range(0, X.shape[0], step):
            check_expression(X[start : start + step], name, counts=counts, integer=integer)
        return
    values = X.data if sp.issparse(X) else np.asarray(X)
    if values.size == 0:
        return
    if not np.all(np.isfinite(values)):
        n_bad = int((~np.isfinite(values)).sum())
        raise ValueError(f"{name} contains {n_bad} NaN or infinite values.")
    if values.dtype.kind == "f" and np.finfo(values.dtype).max > FLOAT32_MAX:
        largest = float(np.abs(values).max())
        if largest > FLOAT32_MAX:
            n_big = int((np.abs(values) > FLOAT32_MAX).sum())
            raise ValueError(
                f"{name} contains {n_big} values too large for float32 (max |value| "
                f"{largest:g} > {FLOAT32_MAX:g}); they would become infinite in the model."
            )
    if counts and values.min() < 0:
        raise ValueError(
            f"{name} contains negative values (min {values.min():g}); counts expected."
        )
    if integer and not np.allclose(values, np.round(values)):
        raise ValueError(f"{name} contains non-integer values; raw counts are needed here.")


def layer_name(layer: str | None) -> str:
    """Human-readable name of a layer for error messages."""
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def get_spatial(adata: AnnData, spatial_key: str = "spatial") -> np.ndarray:
    """Return the ``(n_obs, 2)`` or ``(n_obs, 3)`` float coordinates in ``adata.obsm[spatial_key]``.

    Two columns are ``x, y`` (a section), three are ``x, y, z`` (a volume, or registered serial
    sections).

    Raises
    ------
    KeyError
        If the key is missing.
    ValueError
        If the coordinates are not a matrix with 2 or 3 columns, or hold NaN/inf.
    """
    if spatial_key not in adata.obsm:
        raise KeyError(
            f"spatial coordinates adata.obsm[{spatial_key!r}] not found "
            f"(obsm has {list(adata.obsm.keys())}); pass `spatial_key=`."
        )
    try:
        coords = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
    except (TypeError, ValueError):
        kind = getattr(adata.obsm[spatial_key], "dtype", type(adata.obsm[spatial_key]).__name__)
        raise ValueError(
            f"adata.obsm[{spatial_key!r}] must hold numbers (x, y) or (x, y, z), got values of "
            f"type {kind}."
        ) from None
    check_spatial_shape(coords, f"adata.obsm[{spatial_key!r}]")
    if not np.all(np.isfinite(coords)):
        raise ValueError(f"adata.obsm[{spatial_key!r}] contains NaN or infinite coordinates.")
    return coords


#: numbers of coordinate columns accepted: ``x, y`` or ``x, y, z``
SPATIAL_DIMS = (2, 3)


def check_spatial_shape(coords: np.ndarray, name: str) -> None:
    """Raise a ``ValueError`` unless ``coords`` is ``(n, 2)`` (x, y) or ``(n, 3)`` (x, y, z).

    Parameters
    ----------
    coords
        The coordinates.
    name
        How they are named in the error, e.g. ``"adata.obsm['spatial']"``.
    """
    if coords.ndim != 2 or coords.shape[1] not in SPATIAL_DIMS:
        raise ValueError(
            f"{name} must have shape (n_obs, 2) for x, y or (n_obs, 3) for x, y, z, got "
            f"{coords.shape}."
        )


def check_spatial_scale(
    spatial_scale: Sequence[float] | None, n_dims: int
) -> tuple[float, ...] | None:
    """``spatial_scale`` as a tuple of ``n_dims`` positive finite factors (or ``None``).

    Parameters
    ----------
    spatial_scale
        One factor per coordinate axis, multiplied into the coordinates before distances are
        taken (e.g. ``(1, 1, 5)`` when z is in units five times smaller than x and y).
    n_dims
        Number of coordinate columns (2 or 3).
    """
    if spatial_scale is None:
        return None
    try:
        scale = tuple(float(s) for s in spatial_scale)
    except (TypeError, ValueError):
        raise ValueError(
            f"`spatial_scale` must be a sequence of {n_dims} positive numbers (one per axis), "
            f"got {spatial_scale!r}."
        ) from None
    if len(scale) != n_dims or not all(np.isfinite(s) and s > 0 for s in scale):
        raise ValueError(
            f"`spatial_scale` must hold {n_dims} positive finite numbers (one per coordinate "
            f"column), got {spatial_scale!r}."
        )
    return scale


#: z extent relative to the x/y extent outside which a volume's axes look mis-scaled
Z_EXTENT_RATIO = (1e-2, 1e2)


def warn_z_extent(coords: np.ndarray, spatial_scale: Sequence[float] | None, where: str) -> None:
    """Warn when 3-D coordinates have a z extent tiny or huge next to x/y and no scale is given.

    Serial sections numbered 0, 1, 2 under x/y in µm, or z in µm under x/y in pixels, make
    neighbours in z far too close or far too distant; ``spatial_scale`` fixes the units.

    Parameters
    ----------
    coords
        ``(n, 2)`` or ``(n, 3)`` coordinates; nothing happens for 2-D ones.
    spatial_scale
        The scale the caller passed (no warning when given).
    where
        The function or model named in the warning.
    """
    if spatial_scale is not None or coords.shape[1] != 3 or len(coords) < 2:
        return
    extent = np.ptp(coords, axis=0)
    xy = float(extent[:2].max())
    z = float(extent[2])
    if xy <= 0 or z <= 0:
        return
    ratio = z / xy
    if Z_EXTENT_RATIO[0] <= ratio <= Z_EXTENT_RATIO[1]:
        return
    warnings.warn(
        f"{where}: the z extent of the coordinates ({z:g}) is {ratio:.2g} times their x/y extent "
        f"({xy:g}); if z is in other units than x and y (e.g. section numbers), pass "
        "`spatial_scale=(1, 1, s)` with s the length of one z unit in x/y units.",
        UserWarning,
        stacklevel=3,
    )


def get_obs_column(adata: AnnData, key: str) -> np.ndarray:
    """Return ``adata.obs[key]`` as an array, with a clear error when missing or with NaN."""
    if key not in adata.obs:
        raise KeyError(
            f"column {key!r} not found in adata.obs (columns: {list(adata.obs.columns)})."
        )
    col = adata.obs[key]
    if col.isna().any():
        raise ValueError(f"adata.obs[{key!r}] has {int(col.isna().sum())} missing values.")
    return col.to_numpy()


def record(adata: AnnData, verb: str, key_added: str, params: dict[str, Any]) -> None:
    """Record the parameters of a run in ``adata.uns['scfound'][verb][key_added]``.

    Runs accumulate: a second run of the same verb under another ``key_added`` keeps the first
    record; a run under the same ``key_added`` replaces it (as it replaces the result).
    """
    runs = adata.uns.setdefault(UNS_KEY, {}).setdefault(verb, {})
    runs.pop(key_added, None)  # a rerun moves to the end: the latest run is the last one
    stamp = datetime.now(UTC).isoformat(timespec="microseconds")
    runs[key_added] = {**{k: _uns_safe(v) for k, v in params.items()}, "time": stamp}


def resolve_group_key(group_key: str | None, sample_key: str | None, where: str) -> str | None:
    """``group_key``, or the deprecated ``sample_key`` it replaces (with a ``FutureWarning``).

    ``group_key`` is scfound's one name for the ``obs`` column of the cells processed together (a
    field of view, tile, tissue sample or slice).
    """
    if sample_key is None:
        return group_key
    if group_key is not None and group_key != sample_key:
        raise ValueError(
            f"{where}: pass `group_key` only (`sample_key` is its deprecated name), got "
            f"group_key={group_key!r} and sample_key={sample_key!r}."
        )
    warnings.warn(
        f"{where}: `sample_key` is deprecated and will be removed; use `group_key=` (the column "
        "of the cells processed together: fields of view, samples, slices).",
        FutureWarning,
        stacklevel=3,
    )
    return sample_key


def _uns_safe(value: Any) -> Any:
    """Convert a parameter to something ``h5ad`` can store."""
    if value is None:
        return "None"
    if isinstance(value, bool | int | float | str | np.number):
        return value
    if isinstance(value, list | tuple):
        return [_uns_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _uns_safe(v) for k, v in value.items()}
    return str(value)


def check_groups(adata: AnnData, group_key: str) -> None:
    """Every group of ``obs[group_key]`` must hold at least two cells."""
    values = get_obs_column(adata, group_key)
    col = adata.obs[group_key]
    counts = (
        col.value_counts()
        if isinstance(col.dtype, pd.CategoricalDtype)
        else pd.Series(values).value_counts()
    )
    empty = counts.index[counts == 0].tolist()
    if empty:
        raise ValueError(
            f"adata.obs[{group_key!r}] has empty groups {empty[:5]}; drop them with "
            f"adata.obs[{group_key!r}] = adata.obs[{group_key!r}].cat.remove_unused_categories()."
        )
    single = counts.index[counts == 1].tolist()
    if single:
        raise ValueError(
            f"adata.obs[{group_key!r}] has {len(single)} group(s) with a single cell "
            f"(e.g. {single[:5]}); a cell needs other cells of its group as context. Merge them "
            "into neighbouring groups (e.g. scfound.pp.spatial_tiles(..., min_cells=...))."
        )


#: output scales of imputed expression: log-normalised (library 1e4) or expected counts
EXPRESSION_SCALES = ("log1p", "counts")


def check_scale(scale: str) -> None:
    """``scale`` must be one of :data:`EXPRESSION_SCALES`."""
    if scale not in EXPRESSION_SCALES:
        raise ValueError(f"scale must be 'log1p' or 'counts', got {scale!r}.")


def check_genes_present(genes: Sequence[str], available: Sequence[str], where: str) -> list[str]:
    """``genes`` as strings, or a ``ValueError`` listing those that ``available`` lacks.

    Parameters
    ----------
    genes
        Requested gene names.
    available
        Gene names that can serve the request (e.g. a reference's ``var_names``).
    where
        How ``available`` is named in the error, e.g. ``"the reference"``.
    """
    genes = [str(g) for g in genes]
    known = set(map(str, available))
    absent = [g for g in genes if g not in known]
    if absent:
        raise ValueError(
            f"{len(absent)} requested gene(s) are not in {where}: {absent[:10]}"
            + (" ..." if len(absent) > 10 else "")
            + "."
        )
    return genes


def record_group_key(setup_method_args: dict[str, Any], group_key: str | None) -> None:
    """Record the resolved ``group_key`` in a model's registry, never the deprecated ``sample_key``.

    Parameters
    ----------
    setup_method_args
        What ``BaseModelClass._get_setup_method_args(**locals())`` returned in ``setup_anndata``;
        changed in place.
    group_key
        The ``group_key`` that :func:`resolve_group_key` returned.
    """
    args = setup_method_args["setup_args"]
    args.pop("sample_key", None)
    args["group_key"] = group_key


def renamed_setup_args(setup_args: dict[str, Any]) -> dict[str, Any]:
    """``setup_anndata`` arguments saved with a model, under their current names.

    Models saved before ``sample_key`` became ``group_key`` recorded ``sample_key``; loading them
    with these arguments neither fails nor warns.

    Parameters
    ----------
    setup_args
        The saved arguments (not changed).

    Returns
    -------
    A new dictionary.
    """
    args = dict(setup_args)
    if "sample_key" in args:
        sample_key = args.pop("sample_key")
        if args.get("group_key") is None:
            args["group_key"] = sample_key
    return args
