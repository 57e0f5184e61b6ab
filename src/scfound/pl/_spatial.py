"""Maps in space of measured and imputed expression, gene by gene."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure

from scfound._docs import doc_params, doc_show_save
from scfound._keys import find_imputed
from scfound._normalize import library_size, log_normalize
from scfound._utils import get_matrix, get_spatial, layer_name, to_dense
from scfound._validate import check_anndata

from ._utils import finish_figure

MASKED_COLOR = "#d9d9d9"
PANEL_WIDTH = 3.2


@doc_params(show_save=doc_show_save)
def imputed_genes(  # noqa: D417 - show and save are filled in by doc_params
    adata: AnnData,
    genes: str | Sequence[str],
    *,
    method: str | None = None,
    measured_layer: str | None = "counts",
    imputed_layer: str | None = None,
    imputed_key: str | None = None,
    spatial_key: str = "spatial",
    mask_layer: str | None = None,
    normalize: bool = True,
    scores: pd.DataFrame | None = None,
    title: str | None = None,
    point_size: float | None = None,
    cmap: str = "viridis",
    ncols: int | None = None,
    z_slices: int | Sequence[float] | Literal["projection"] = 3,
    slice_thickness: float | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Measured and imputed expression of genes, side by side, in space.

    For each gene the figure holds a group of panels that share one colour scale: the measured
    values, the imputed values and, when ``mask_layer`` is given, the measured values at the
    entries held out for evaluation only (the other cells in grey).

    The imputation is found from ``method`` by the naming rules of :func:`scfound.tl.impute`:
    ``layers["<method>_imputed"]`` for measured genes, else ``obsm["<method>_imputed"]``.
    ``imputed_layer`` or ``imputed_key`` name the place explicitly instead.

    From ``obsm``, the imputed values come from a DataFrame, such as the genes a dataset does not
    measure imputed from a reference (``obsm["stai_imputed"]``, one column per gene). A gene
    that is also in ``adata.var_names`` keeps its measured (and held-out) panels; a gene that is
    not measured gets only the panel "<gene>: imputed (not measured)". These values are on the
    scale of the method's output (e.g. the reference's log-normalised expression), so they are
    shown as stored, with a colour scale of their own;
    ``normalize`` applies to the measured values only.

    With 3-D coordinates (x, y, z) each gene gets one row of panels per z-slice: the cells within
    ``slice_thickness / 2`` of the slice's z, drawn on x and y, measured next to imputed, with one
    colour scale per gene across its slices; or, with ``z_slices="projection"``, one row with
    every cell drawn on x and y, the highest values on top.

    Parameters
    ----------
    adata
        Annotated data matrix with coordinates in ``adata.obsm[spatial_key]``.
    genes
        A gene name or a list of names from ``adata.var_names`` or, for an imputation in
        ``obsm``, from the columns of its DataFrame.
    method
        Method whose imputation to show (``"spaformer"``, ``"cellplm"``, ``"stai"``, or the
        ``key_added`` of an :func:`scfound.tl.impute` call); default the method of the latest
        ``impute`` run recorded in ``adata.uns["scfound"]``, else ``"spaformer"``. Not used when
        ``imputed_layer`` or ``imputed_key`` is given.
    measured_layer
        Layer with the measured expression (``None`` for ``adata.X``).
    imputed_layer
        Layer with the imputed expression, e.g. ``"spaformer_imputed"``; overrides ``method``.
    imputed_key
        Key of a :class:`~pandas.DataFrame` in ``adata.obsm`` (cells x imputed genes, gene names
        as columns) to read the imputed values from, e.g. ``"stai_imputed"``; overrides
        ``method``.
    spatial_key
        Key of the ``(n_obs, 2)`` (x, y) or ``(n_obs, 3)`` (x, y, z) coordinates in ``adata.obsm``.
    mask_layer
        Boolean layer marking held-out entries (``True`` = held out), e.g. written by
        :func:`scfound.pp.mask_entries`. Adds the panel "measured (held-out entries)".
    normalize
        Show ``log1p`` of per-cell normalised values: each matrix is scaled so that every cell
        sums to the median total of that matrix over all genes. ``False`` shows the layers as
        they are (e.g. when the imputation is already log-normalised).
    scores
        Per-gene scores, a DataFrame indexed by gene such as
        :func:`scfound.metrics.per_gene_scores` returns; its ``pcc``, ``scc`` and ``rmse`` values
        of a gene are added to the title of its imputed panel.
    title
        Title of the whole figure.
    point_size
        Marker size; default scales with the number of cells.
    cmap
        Colour map of the expression values.
    ncols
        Number of genes (gene slices in 3-D) placed side by side in one row of the figure
        (default 1).
    z_slices
        3-D coordinates only: the number of z-slices evenly spaced through the volume (at the
        centres of equal slabs), the z positions of the slices, or ``"projection"``. Ignored for
        2-D coordinates.
    slice_thickness
        3-D coordinates only: the thickness of a slice in z units; default the z extent divided
        by the number of slices (slices at the default positions then cover the volume).
    {show_save}

    Returns
    -------
    The figure; its axes are ordered gene by gene, panels left to right, then the colour bars:
    one per gene, or with ``imputed_key`` one per panel.

    Raises
    ------
    KeyError
        If genes, layers, the imputation or the coordinates are missing.
    TypeError
        If ``adata.obsm[imputed_key]`` is not a DataFrame.
    ValueError
        If values are not finite, negative with ``normalize=True``, the mask is not boolean,
        both ``imputed_layer`` and ``imputed_key`` are given, or ``z_slices`` or
        ``slice_thickness`` are invalid for 3-D coordinates.

    Examples
    --------
    >>> import scfound as sf
    >>> adata = sf.datasets.osmfish()
    >>> sf.pp.spatial_tiles(adata, n_tiles=16)
    >>> sf.tl.impute(adata, layer="counts", group_key="spatial_tile")
    >>> sf.pl.imputed_genes(adata, ["Gad2", "Rorb"])  # finds layers["spaformer_imputed"]

    Genes imputed from a reference, measured (``Gad2``) or not (``Mbp``):

    >>> sf.pl.imputed_genes(adata, ["Gad2", "Mbp"], method="stai")  # obsm["stai_imputed"]
    """
    check_anndata(adata)
    if imputed_layer is not None and imputed_key is not None:
        raise ValueError(
            "pass either imputed_layer= (a layer) or imputed_key= (a DataFrame in obsm), not both."
        )
    if imputed_layer is None and imputed_key is None:
        where, key = find_imputed(adata, method)
        if where == "layers":
            imputed_layer = key
        else:
            imputed_key = key
    genes = [genes] if isinstance(genes, str) else list(genes)
    if not genes:
        raise ValueError("`genes` is empty; pass at least one gene name.")
    gene_idx = adata.var_names.get_indexer(genes)
    if imputed_key is None:
        missing = [g for g, i in zip(genes, gene_idx, strict=True) if i < 0]
        if missing:
            raise KeyError(f"genes not found in adata.var_names: {missing}.")
    if adata.n_obs == 0:
        raise ValueError(f"`adata` has 0 cells x {adata.n_vars} genes; at least 1 cell to plot.")
    if ncols is not None and ncols < 1:
        raise ValueError(f"ncols must be a positive integer, got {ncols!r}.")

    coords = get_spatial(adata, spatial_key)
    # rows of the figure: (gene index, cells shown or None for all, heading suffix)
    slices = _z_slices(coords, z_slices, slice_thickness)
    coords = coords[:, :2]
    if imputed_key is None:
        imputed = _expression(adata, imputed_layer, gene_idx, normalize)
    else:
        imputed = _obsm_expression(adata, imputed_key, genes)
    is_measured = gene_idx >= 0
    # columns of `measured` / `held_out`: the measured genes, in the order of `genes`
    column = np.cumsum(is_measured) - 1
    measured = held_out = None
    if is_measured.any():
        measured = _expression(adata, measured_layer, gene_idx[is_measured], normalize)
        if mask_layer is not None:
            held_out = _mask(adata, mask_layer, gene_idx[is_measured])

    n_panels = 1 if measured is None else (2 if held_out is None else 3)
    entries = [(k, cells, suffix) for k in range(len(genes)) for cells, suffix in slices]
    ncols = min(ncols or 1, len(entries))
    nrows = math.ceil(len(entries) / ncols)
    span = np.ptp(coords, axis=0)
    ratio = float(np.clip(span[1] / span[0], 0.3, 2.0)) if span[0] > 0 else 1.0
    fig, axes = plt.subplots(
        nrows,
        ncols * n_panels,
        figsize=(ncols * n_panels * PANEL_WIDTH + ncols * 0.8, nrows * PANEL_WIDTH * ratio + 0.3),
        squeeze=False,
        layout="constrained",
    )
    size = point_size if point_size is not None else float(np.clip(3e4 / adata.n_obs, 0.5, 30.0))
    measured_label = "log1p(normalised)" if normalize else "expression"
    labels = {
        "measured": measured_label,
        "imputed": measured_label if imputed_key is None else "imputed (as stored)",
        "shared": measured_label,
    }

    for e, (k, cells, suffix) in enumerate(entries):
        gene = genes[k]
        row, col = divmod(e, ncols)
        group = list(axes[row, col * n_panels : (col + 1) * n_panels])
        # (slot in the group, values, title, colour scale)
        if is_measured[k]:
            m = measured[:, column[k]]
            panels = [
                (0, m, f"{gene}: measured", "measured"),
                (1, imputed[:, k], "imputed" + _score_text(scores, gene), "imputed"),
            ]
            if held_out is not None:
                held = np.where(held_out[:, column[k]], m, np.nan)
                panels.append((2, held, "measured (held-out entries)", "measured"))
        else:
            heading = f"{gene}: imputed (not measured)" + _score_text(scores, gene)
            panels = [(min(1, n_panels - 1), imputed[:, k], heading, "imputed")]
        if imputed_key is None:
            # layers of the same kind: one colour scale per gene
            panels = [(slot, values, head, "shared") for slot, values, head, _ in panels]
        limits = {
            scale: _limits([values for _, values, _, s in panels if s == scale])
            for scale in {scale for *_, scale in panels}
        }
        drawn = []
        for slot, values, heading, scale in panels:
            ax = group[slot]
            xy, shown = (coords, values) if cells is None else (coords[cells], values[cells])
            mappable = _scatter(ax, xy, shown, size, cmap, *limits[scale])
            ax.set_title(heading + (suffix if slot == 0 else ""), fontsize="medium")
            drawn.append((ax, mappable, labels[scale]))
        used = {slot for slot, *_ in panels}
        for slot, ax in enumerate(group):
            if slot not in used:
                ax.remove()
        if imputed_key is None:
            fig.colorbar(drawn[-1][1], ax=group, shrink=0.8, label=drawn[-1][2])
        else:
            for ax, mappable, label in drawn:
                fig.colorbar(mappable, ax=ax, shrink=0.8, label=label)
    for ax in axes.ravel()[len(entries) * n_panels :]:
        ax.remove()
    if title is not None:
        fig.suptitle(title)
    return finish_figure(fig, show=show, save=save)


def _z_slices(
    coords: np.ndarray,
    z_slices: int | Sequence[float] | str,
    thickness: float | None,
) -> list[tuple[np.ndarray | None, str]]:
    """The z-slices of 3-D coordinates: ``(cells shown, heading suffix)`` per slice.

    2-D coordinates give one entry with every cell and no suffix.
    """
    if coords.shape[1] == 2:
        return [(None, "")]
    z = coords[:, 2]
    if isinstance(z_slices, str):
        if z_slices != "projection":
            raise ValueError(
                f"z_slices must be a number of slices, z positions or 'projection', got "
                f"{z_slices!r}."
            )
        return [(None, "\n(projection over z)")]
    low, high = float(z.min()), float(z.max())
    if isinstance(z_slices, int | np.integer) and not isinstance(z_slices, bool):
        if z_slices < 1:
            raise ValueError(f"z_slices must be a positive number of slices, got {z_slices!r}.")
        edges = np.linspace(low, high, int(z_slices) + 1)
        positions = (edges[:-1] + edges[1:]) / 2
    else:
        try:
            positions = np.asarray(z_slices, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            positions = np.array([np.nan])
        if positions.size == 0 or not np.all(np.isfinite(positions)):
            raise ValueError(
                f"z_slices must be a number of slices, finite z positions or 'projection', got "
                f"{z_slices!r}."
            )
    if thickness is None:
        thickness = (high - low) / len(positions) if high > low else 1.0
    elif not (np.isfinite(thickness) and thickness > 0):
        raise ValueError(f"slice_thickness must be a positive number, got {thickness!r}.")
    out = []
    for position in positions:
        # a cell on the border of two default slabs belongs to one of them only
        cells = np.flatnonzero(
            (z >= position - thickness / 2)
            & ((z < position + thickness / 2) | (z == high) & (position + thickness / 2 >= high))
        )
        out.append((cells, f"\n(z = {position:.4g} ± {thickness / 2:.3g}, {len(cells)} cells)"))
    return out


#: columns of a per-gene score table written into panel titles, with their labels
SCORE_LABELS = {"pcc": "PCC", "scc": "SCC", "rmse": "RMSE"}


def _score_text(scores: pd.DataFrame | None, gene: str) -> str:
    """A new line with ``PCC 0.712, RMSE 0.801`` of ``gene`` from a score table, or ``""``."""
    if scores is None:
        return ""
    if not isinstance(scores, pd.DataFrame):
        raise TypeError(f"scores must be a DataFrame indexed by gene, got {type(scores).__name__}.")
    if gene not in scores.index:
        return ""
    parts = [
        f"{label} {float(scores.at[gene, column]):.3f}"
        for column, label in SCORE_LABELS.items()
        if column in scores.columns and np.isfinite(float(scores.at[gene, column]))
    ]
    return "\n" + ", ".join(parts) if parts else ""


def _limits(panels: list[np.ndarray]) -> tuple[float, float]:
    """Common ``(vmin, vmax)`` of the non-NaN values of panels; a range of 1 if constant."""
    values = np.concatenate(panels)
    vmin, vmax = float(np.nanmin(values)), float(np.nanmax(values))
    if not vmax > vmin:
        vmax = vmin + 1.0
    return vmin, vmax


def _obsm_expression(adata: AnnData, key: str, genes: list[str]) -> np.ndarray:
    """Dense ``(n_obs, n_genes)`` values of ``genes`` from the DataFrame ``adata.obsm[key]``."""
    if key not in adata.obsm:
        raise KeyError(
            f"imputed values adata.obsm[{key!r}] not found (obsm has {list(adata.obsm.keys())}); "
            "pass `imputed_key=`."
        )
    frame = adata.obsm[key]
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(
            f"adata.obsm[{key!r}] must be a pandas DataFrame with gene names as columns, got "
            f"{type(frame).__name__}."
        )
    if not frame.columns.is_unique:
        raise ValueError(f"adata.obsm[{key!r}] has duplicated column names.")
    idx = frame.columns.get_indexer(genes)
    missing = [g for g, i in zip(genes, idx, strict=True) if i < 0]
    if missing:
        measured = [g for g in missing if g in adata.var_names]
        unmeasured = [g for g in missing if g not in adata.var_names]
        shown = list(frame.columns[:20]) + (["..."] if len(frame.columns) > 20 else [])
        parts = []
        if unmeasured:
            parts.append(f"genes neither in adata.var_names nor imputed: {unmeasured}")
        if measured:
            parts.append(
                f"measured genes without imputation in adata.obsm[{key!r}]: {measured} (for a "
                "layer's imputation pass `imputed_layer=` and `imputed_key=None`)"
            )
        raise KeyError("; ".join(parts) + f". Imputed genes in adata.obsm[{key!r}]: {shown}.")
    values = frame.iloc[:, idx].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"adata.obsm[{key!r}] contains NaN or infinite values.")
    return values


def _expression(
    adata: AnnData, layer: str | None, gene_idx: np.ndarray, normalize: bool
) -> np.ndarray:
    """Dense ``(n_obs, n_genes)`` values of a layer, ``log1p``-normalised when asked."""
    X = get_matrix(adata, layer)
    values = to_dense(X[:, gene_idx], dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{layer_name(layer)} contains NaN or infinite values.")
    if not normalize:
        return values
    if values.size and values.min() < 0:
        raise ValueError(
            f"{layer_name(layer)} has negative values, which cannot be library-size normalised; "
            "pass normalize=False to show the values as they are."
        )
    totals = library_size(X, np.float64)
    positive = totals > 0
    target = float(np.median(totals[positive])) if positive.any() else 1.0
    return log_normalize(values, target, library=totals)


def _mask(adata: AnnData, layer: str, gene_idx: np.ndarray) -> np.ndarray:
    """Boolean ``(n_obs, n_genes)`` held-out mask from a layer."""
    M = get_matrix(adata, layer)
    M = M[:, gene_idx]
    values = M.toarray() if sp.issparse(M) else np.asarray(M)
    if values.dtype != bool:
        if not np.isin(values, (0, 1)).all():
            raise ValueError(
                f"{layer_name(layer)} must be a boolean mask (True = held out), "
                f"got values other than 0/1 of dtype {values.dtype}."
            )
        values = values.astype(bool)
    return values


def _scatter(
    ax: Axes,
    coords: np.ndarray,
    values: np.ndarray,
    size: float,
    cmap: str,
    vmin: float,
    vmax: float,
) -> PathCollection:
    """Scatter cells coloured by ``values``; NaN cells are drawn in grey underneath."""
    hidden = np.isnan(values)
    if hidden.any():
        ax.scatter(*coords[hidden].T, s=size, c=MASKED_COLOR, linewidths=0, rasterized=True)
    shown = np.flatnonzero(~hidden)
    order = shown[np.argsort(values[shown], kind="stable")]
    mappable = ax.scatter(
        *coords[order].T,
        s=size,
        c=values[order],
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        linewidths=0,
        rasterized=True,
    )
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    return mappable
