"""The minimal AnnData a model is set up with, so that the caller's object stays as it is.

scvi-tools writes registry columns (``_scvi_*``) into the AnnData a model is set up with. The
adapters therefore hand their model a new AnnData that shares the caller's count matrix (no copy),
stored under the same layer name, and holds only the ``obs`` columns, coordinates and ``var``
columns the model reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from scfound._utils import get_matrix, get_obs_column, get_spatial

#: ``obs`` column of the spatial tiles cut for a section without groups (minimal AnnData only)
TILE_KEY = "spatial_tile"

#: cells per spatial tile when a section has no ``group_key`` (one tile = one training step)
CELLS_PER_TILE = 500


def minimal_anndata(
    adata: AnnData,
    layer: str | None,
    *,
    obs_keys: Sequence[str | None] = (),
    obs: Mapping[str, np.ndarray] | None = None,
    spatial_key: str | None = None,
    var_keys: Sequence[str | None] = (),
) -> AnnData:
    """A new AnnData sharing ``adata``'s matrix (under ``layer``) with only the keys asked for.

    Parameters
    ----------
    adata
        The caller's data; not modified.
    layer
        Layer with the counts (``None``: ``.X``); the minimal AnnData stores the same matrix
        object under the same name, so a model set up on it records the caller's layer.
    obs_keys
        Columns of ``adata.obs`` to carry over (checked for presence and missing values);
        ``None`` entries are skipped.
    obs
        Further columns, computed by the caller (e.g. labels), one value per cell.
    spatial_key
        Key of coordinates in ``adata.obsm`` to carry over (checked), or ``None``.
    var_keys
        Columns of ``adata.var`` to carry over (e.g. gene identifiers).
    """
    X = get_matrix(adata, layer)
    frame = pd.DataFrame(index=adata.obs_names.copy())
    for key in obs_keys:
        if key is not None:
            frame[key] = get_obs_column(adata, key)
    for key, values in (obs or {}).items():
        frame[key] = np.asarray(values)
    var_keys = [k for k in var_keys if k is not None]
    for key in var_keys:
        if key not in adata.var:
            raise KeyError(
                f"column {key!r} not found in adata.var (columns: {list(adata.var.columns)})."
            )
    var = adata.var[var_keys].copy() if var_keys else pd.DataFrame(index=adata.var_names.copy())
    obsm = {spatial_key: get_spatial(adata, spatial_key)} if spatial_key is not None else None
    return AnnData(
        X=X if layer is None else None,
        obs=frame,
        var=var,
        obsm=obsm,
        layers=None if layer is None else {layer: X},
    )


def add_tiles(small: AnnData, spatial_key: str) -> str:
    """Cut ``small`` (a minimal AnnData) into square tiles of about :data:`CELLS_PER_TILE` cells.

    Returns the ``obs`` column of the tiles, :data:`TILE_KEY`.
    """
    from scfound.pp import spatial_tiles

    n_tiles = max(round(small.n_obs / CELLS_PER_TILE), 1)
    spatial_tiles(small, n_tiles=n_tiles, spatial_key=spatial_key, key_added=TILE_KEY, min_cells=2)
    return TILE_KEY
