"""Spatial grouping of cells: square tiles of a section and spatial neighbour graphs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy.spatial import cKDTree

from scfound._validate import check_anndata, check_cells_and_genes, check_key_added

from .._constants import DEFAULT_SPATIAL_KEY
from .._utils import (
    check_spatial_scale,
    get_obs_column,
    get_spatial,
    record,
    warn_z_extent,
)


def spatial_tiles(
    adata: AnnData,
    *,
    tile_size: float | Sequence[float] | None = None,
    n_tiles: int | None = None,
    spatial_key: str = DEFAULT_SPATIAL_KEY,
    key_added: str = "spatial_tile",
    min_cells: int = 1,
    copy: bool = False,
) -> AnnData | None:
    """Cut a section (or a volume) into a grid of tiles, to use as groups (FOV-like sequences).

    The bounding box of the coordinates is cut either into squares of side ``tile_size`` or
    into a grid of about ``n_tiles`` tiles of equal area, whose numbers of rows and columns
    follow the aspect ratio of the box (so tiles are close to square). Tiles holding fewer
    than ``min_cells`` cells are merged into the nearest tile (by tile centre) that holds at
    least ``min_cells`` cells.

    With 3-D coordinates (x, y, z) the volume is cut into blocks the same way: cubes of side
    ``tile_size`` (or boxes, with one size per axis, e.g. ``(200, 200, 30)`` for slabs along
    z), or about ``n_tiles`` near-cubic blocks; an axis shorter than the block side is not cut,
    so a thin volume is cut into columns through its whole depth.

    Parameters
    ----------
    adata
        Annotated data matrix with coordinates in ``adata.obsm[spatial_key]``.
    tile_size
        Side of the square tiles (cubic blocks in 3-D), in the units of the coordinates; or one
        side per axis.
    n_tiles
        Approximate number of tiles over the bounding box. Exactly one of ``tile_size`` and
        ``n_tiles`` must be given.
    spatial_key
        Key of the ``(n_obs, 2)`` (x, y) or ``(n_obs, 3)`` (x, y, z) coordinates in
        ``adata.obsm``.
    key_added
        Column of ``adata.obs`` that receives the tile labels.
    min_cells
        Smallest number of cells in a tile; smaller tiles are merged into their nearest
        large enough neighbour.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``. Sets

    - ``adata.obs[key_added]``: categorical tile label per cell, ``'<row>_<col>'`` of the
      grid (``'<layer>_<row>_<col>'`` in 3-D, the layer counted along z); only non-empty tiles
      are categories;
    - ``adata.uns['scfound']['spatial_tiles'][key_added]``: the parameters, the grid shape and the
      number of tiles.

    Examples
    --------
    >>> import scfound
    >>> adata = scfound.datasets.synthetic_spatial(n_cells=1000)
    >>> scfound.pp.spatial_tiles(adata, n_tiles=4)
    >>> adata.obs["spatial_tile"].nunique()
    4
    """
    check_anndata(adata)
    check_cells_and_genes(adata, genes=False)
    if (tile_size is None) == (n_tiles is None):
        raise ValueError("pass exactly one of `tile_size` and `n_tiles`.")
    if n_tiles is not None and (not isinstance(n_tiles, int | np.integer) or n_tiles < 1):
        raise ValueError(f"`n_tiles` must be a positive integer, got {n_tiles!r}.")
    if not isinstance(min_cells, int | np.integer) or min_cells < 1:
        raise ValueError(f"`min_cells` must be a positive integer, got {min_cells!r}.")
    coords = get_spatial(adata, spatial_key)
    check_key_added(adata, "pp.spatial_tiles", key_added, [("obs", key_added)])
    n_dims = coords.shape[1]
    if tile_size is not None:
        sizes = np.atleast_1d(np.asarray(tile_size, dtype=object))
        valid = sizes.ndim == 1 and len(sizes) in (1, n_dims)
        valid = valid and all(
            isinstance(t, int | float | np.integer | np.floating)
            and not isinstance(t, bool)
            and np.isfinite(t)
            and t > 0
            for t in sizes
        )
        if not valid:
            raise ValueError(
                f"`tile_size` must be a positive number or {n_dims} positive numbers (one per "
                f"axis), got {tile_size!r}."
            )
    if min_cells > len(coords):
        raise ValueError(
            f"`min_cells` ({min_cells}) exceeds the number of cells ({len(coords)}); no tile "
            "can hold that many."
        )

    lower = coords.min(axis=0)
    extent = coords.max(axis=0) - lower
    if tile_size is not None:
        step = np.broadcast_to(np.asarray(tile_size, dtype=np.float64), (n_dims,)).copy()
        shape = np.maximum(np.ceil(extent / step), 1).astype(int)
    else:
        grid = _grid_shape if n_dims == 2 else _grid_shape_3d
        shape = grid(extent, int(n_tiles))
        step = np.where(extent > 0, extent / shape, 1.0)
    # shape / step are (n_cols, n_rows[, n_layers]) / (width, height[, depth]): x indexes
    # columns, y rows, z layers; tiles are numbered layer-major, then row-major.
    cell_idx = np.minimum((coords - lower) // step, shape - 1).astype(np.int64)
    if n_dims == 2:
        tile = cell_idx[:, 1] * shape[0] + cell_idx[:, 0]
    else:
        tile = (cell_idx[:, 2] * shape[1] + cell_idx[:, 1]) * shape[0] + cell_idx[:, 0]

    occupied, counts = np.unique(tile, return_counts=True)
    large = occupied[counts >= min_cells]
    small = occupied[counts < min_cells]
    target = occupied.copy()
    if len(small):

        def centre(ids: np.ndarray) -> np.ndarray:
            if n_dims == 2:
                return lower + (np.stack([ids % shape[0], ids // shape[0]], axis=1) + 0.5) * step
            axes = np.unravel_index(ids, tuple(shape[::-1]))[::-1]  # (x, y, z) indices
            return lower + (np.stack(axes, axis=1) + 0.5) * step

        _, nearest = cKDTree(centre(large)).query(centre(small))
        target[np.searchsorted(occupied, small)] = large[nearest]
    merged = target[np.searchsorted(occupied, tile)]

    kept = np.unique(merged)
    if n_dims == 2:
        names = [f"{t // shape[0]}_{t % shape[0]}" for t in kept]
    else:
        layer, row, col = np.unravel_index(kept, tuple(shape[::-1]))
        names = [f"{z}_{r}_{c}" for z, r, c in zip(layer, row, col, strict=True)]
    labels = pd.Categorical.from_codes(np.searchsorted(kept, merged), categories=names)

    if copy:
        adata = adata.copy()
    adata.obs[key_added] = labels
    record(
        adata,
        "spatial_tiles",
        key_added,
        {
            "tile_size": tile_size,
            "n_tiles": n_tiles,
            "spatial_key": spatial_key,
            "key_added": key_added,
            "min_cells": min_cells,
            "grid_shape": [int(n) for n in shape[::-1]],
            "tile_extent": [float(t) for t in step],
            "n_tiles_out": len(kept),
            "n_tiles_merged": len(small),
        },
    )
    return adata if copy else None


def _grid_shape(extent: np.ndarray, n_tiles: int) -> np.ndarray:
    """Numbers of columns and rows of a grid of about ``n_tiles`` near-square tiles."""
    width, height = extent
    if width <= 0 and height <= 0:
        return np.ones(2, dtype=int)
    if height <= 0:
        return np.array([n_tiles, 1])
    if width <= 0:
        return np.array([1, n_tiles])
    n_cols = max(1, round(np.sqrt(n_tiles * width / height)))
    n_rows = max(1, round(n_tiles / n_cols))
    return np.array([n_cols, n_rows])


def _grid_shape_3d(extent: np.ndarray, n_tiles: int) -> np.ndarray:
    """Blocks along x, y, z of a grid of about ``n_tiles`` near-cubic blocks.

    The block side is ``(volume / n_tiles) ** (1 / d)`` over the ``d`` axes to cut; an axis
    shorter than that side is not cut (one block deep), and the side is computed again over the
    remaining axes, so a thin volume is cut like a section, into columns through its depth.
    """
    shape = np.ones(3, dtype=int)
    active = [axis for axis in range(3) if extent[axis] > 0]
    while active:
        side = float(np.prod(extent[active]) / n_tiles) ** (1.0 / len(active))
        short = [axis for axis in active if extent[axis] < side]
        if not short:
            break
        active = [axis for axis in active if axis not in short]
    if active:
        shape[active] = np.maximum(1, np.round(extent[active] / side)).astype(int)
    return shape


def spatial_graph(
    adata: AnnData,
    *,
    method: Literal["knn", "radius"] = "knn",
    n_neighs: int = 6,
    radius: float | None = None,
    spatial_key: str = DEFAULT_SPATIAL_KEY,
    group_key: str | None = None,
    spatial_scale: Sequence[float] | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Spatial neighbour graph of the cells, computed with :func:`squidpy.gr.spatial_neighbors`.

    Coordinates are treated as generic (not a Visium grid). With ``group_key``, the graph is
    built within each group (FOV, sample, tile) separately, so no edge joins two groups. With
    3-D coordinates (x, y, z) the graph is built in the volume, so cells above one another
    are neighbours when they are close; sections registered into one volume are joined
    across z unless ``group_key`` names the sections.

    Parameters
    ----------
    adata
        Annotated data matrix with coordinates in ``adata.obsm[spatial_key]``.
    method
        ``'knn'``: each cell is joined to its ``n_neighs`` nearest cells; ``'radius'``: to all
        cells within ``radius``.
    n_neighs
        Number of neighbours for ``method='knn'``.
    radius
        Distance threshold for ``method='radius'``, in the units of the coordinates.
    spatial_key
        Key of the ``(n_obs, 2)`` (x, y) or ``(n_obs, 3)`` (x, y, z) coordinates in
        ``adata.obsm``.
    group_key
        Column of ``adata.obs`` with the groups; ``None`` builds one graph over all cells.
    spatial_scale
        One factor per axis multiplied into the coordinates before neighbours are found, e.g.
        ``(1, 1, 5)`` when one z unit is 5 x/y units; distances and ``radius`` are then in the
        scaled units. ``None`` uses the coordinates as they are (and warns for 3-D ones whose
        z extent is below 1/100 or above 100 times the x/y extent).
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``. Sets squidpy's standard keys

    - ``adata.obsp['spatial_connectivities']``: binary adjacency (CSR);
    - ``adata.obsp['spatial_distances']``: Euclidean edge lengths (CSR);
    - ``adata.uns['spatial_neighbors']``: the keys above and squidpy's parameters;
    - ``adata.uns['scfound']['spatial_graph']['spatial_connectivities']``: the parameters of
      this call.

    Examples
    --------
    >>> import scfound
    >>> adata = scfound.datasets.synthetic_spatial(n_cells=500, n_fovs=4)
    >>> scfound.pp.spatial_graph(adata, n_neighs=6, group_key="fov")
    >>> adata.obsp["spatial_connectivities"].shape
    (500, 500)
    """
    check_anndata(adata)
    check_cells_and_genes(adata, min_obs=2, genes=False)  # a graph needs two cells
    import squidpy as sq

    coords = get_spatial(adata, spatial_key)
    scale = check_spatial_scale(spatial_scale, coords.shape[1])
    warn_z_extent(coords, scale, "spatial_graph")
    if scale is not None:
        coords = coords * np.asarray(scale)
    if method == "knn":
        if radius is not None:
            raise ValueError("`radius` is only used with method='radius'; leave it None for 'knn'.")
        if not isinstance(n_neighs, int | np.integer) or n_neighs < 1:
            raise ValueError(f"`n_neighs` must be a positive integer, got {n_neighs!r}.")
    elif method == "radius":
        if radius is None or not (np.isfinite(radius) and radius > 0):
            raise ValueError(f"method='radius' needs a positive `radius`, got {radius!r}.")
    else:
        raise ValueError(f"`method` must be 'knn' or 'radius', got {method!r}.")

    # Run squidpy on a minimal AnnData so that nothing else of the caller's object changes.
    index = pd.RangeIndex(adata.n_obs).astype(str)
    obs = pd.DataFrame(index=index)
    library_key = None
    if group_key is not None:
        groups = pd.Categorical(get_obs_column(adata, group_key))
        groups = groups.remove_unused_categories()
        if method == "knn":
            sizes = pd.Series(groups).value_counts()
            too_small = sizes[sizes <= n_neighs]
            if len(too_small):
                raise ValueError(
                    f"groups of adata.obs[{group_key!r}] with at most n_neighs={n_neighs} cells "
                    f"cannot have {n_neighs} neighbours: {too_small.to_dict()}; lower `n_neighs`."
                )
        library_key = "_group"
        obs[library_key] = groups
    elif method == "knn" and n_neighs >= adata.n_obs:
        raise ValueError(f"`n_neighs` ({n_neighs}) must be smaller than n_obs ({adata.n_obs}).")
    tmp = AnnData(obs=obs, obsm={"spatial": coords})

    if method == "knn":
        if hasattr(sq.gr, "spatial_neighbors_knn"):
            sq.gr.spatial_neighbors_knn(tmp, library_key=library_key, n_neighs=int(n_neighs))
        else:  # pragma: no cover - squidpy < 1.7
            sq.gr.spatial_neighbors(
                tmp, library_key=library_key, coord_type="generic", n_neighs=int(n_neighs)
            )
    elif hasattr(sq.gr, "spatial_neighbors_radius"):
        sq.gr.spatial_neighbors_radius(tmp, library_key=library_key, radius=float(radius))
    else:  # pragma: no cover - squidpy < 1.7
        sq.gr.spatial_neighbors(
            tmp, library_key=library_key, coord_type="generic", radius=float(radius)
        )

    if copy:
        adata = adata.copy()
    adata.obsp["spatial_connectivities"] = tmp.obsp["spatial_connectivities"]
    adata.obsp["spatial_distances"] = tmp.obsp["spatial_distances"]
    adata.uns["spatial_neighbors"] = tmp.uns["spatial_neighbors"]
    record(
        adata,
        "spatial_graph",
        "spatial_connectivities",
        {
            "method": method,
            "n_neighs": n_neighs if method == "knn" else None,
            "radius": radius,
            "spatial_key": spatial_key,
            "group_key": group_key,
            **({"spatial_scale": list(scale)} if scale is not None else {}),
        },
    )
    return adata if copy else None
