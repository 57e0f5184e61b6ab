"""Fit or reuse a SpaFormer for the ``tl`` functions, without touching the caller's AnnData.

scvi-tools writes registry columns (``_scvi_*``) into the AnnData a model is set up with. The
``tl`` functions therefore hand the model a lightweight AnnData that shares the caller's matrix and
coordinates (no copy) and holds its own ``obs``; results are written back under documented keys.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import scvi
from anndata import AnnData

from scfound._utils import get_matrix, get_obs_column, get_spatial
from scfound.models import SpaFormer

#: cells per spatial tile when a section has no ``group_key`` (one tile = one training step)
CELLS_PER_TILE = 500
TILE_KEY = "spatial_tile"


def model_input(
    adata: AnnData,
    layer: str | None,
    spatial_key: str,
    group_key: str | None,
    batch_key: str | None = None,
) -> AnnData:
    """A minimal AnnData sharing the caller's matrix (under ``layer``) and coordinates.

    When ``group_key`` is None, the section is cut into square tiles of about
    :data:`CELLS_PER_TILE` cells, stored in ``obs["spatial_tile"]`` of the minimal AnnData only.
    """
    X = get_matrix(adata, layer)
    obs = pd.DataFrame(index=adata.obs_names.copy())
    for key in (group_key, batch_key):
        if key is not None:
            get_obs_column(adata, key)
            obs[key] = adata.obs[key].to_numpy()
    coords = get_spatial(adata, spatial_key)
    small = AnnData(
        X=X if layer is None else None,
        obs=obs,
        var=pd.DataFrame(index=adata.var_names.copy()),
        obsm={spatial_key: coords},
        layers=None if layer is None else {layer: X},
    )
    if group_key is None:
        from scfound.pp import spatial_tiles

        n_tiles = max(round(adata.n_obs / CELLS_PER_TILE), 1)
        spatial_tiles(
            small, n_tiles=n_tiles, spatial_key=spatial_key, key_added=TILE_KEY, min_cells=2
        )
    return small


def fit_spaformer(
    adata: AnnData,
    *,
    layer: str | None,
    spatial_key: str,
    group_key: str | None,
    batch_key: str | None = None,
    max_epochs: int = 200,
    model_kwargs: dict[str, Any] | None = None,
    train_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
) -> tuple[SpaFormer, AnnData]:
    """Set up and train a SpaFormer on a minimal copy-free view of ``adata``."""
    small = model_input(adata, layer, spatial_key, group_key, batch_key)
    scvi.settings.seed = seed
    SpaFormer.setup_anndata(
        small,
        layer=layer,
        spatial_key=spatial_key,
        group_key=TILE_KEY if group_key is None else group_key,
        batch_key=batch_key,
    )
    model = SpaFormer(small, **(model_kwargs or {}))
    model.train(max_epochs=max_epochs, seed=seed, **(train_kwargs or {}))
    return model, small


def reuse_spaformer(model: SpaFormer, adata: AnnData) -> AnnData:
    """Minimal AnnData of ``adata`` laid out as ``model`` was set up (same layer and keys)."""
    args = model.adata_manager.registry["setup_args"]
    group_key = args.get("group_key")
    small = model_input(
        adata,
        args.get("layer"),
        args.get("spatial_key", "spatial"),
        group_key,
        args.get("batch_key"),
    )
    if group_key is None and TILE_KEY in small.obs:
        del small.obs[TILE_KEY]
    return small


def spaformer_for(
    adata: AnnData, model: SpaFormer | None, **fit_kwargs: Any
) -> tuple[SpaFormer, AnnData]:
    """The given trained ``model`` with ``adata`` laid out for it, or a newly fitted one."""
    if model is None:
        return fit_spaformer(adata, **fit_kwargs)
    return model, reuse_spaformer(model, adata)
