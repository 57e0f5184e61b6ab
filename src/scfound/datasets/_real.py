"""Small real spatial datasets shipped inside the package (no network needed).

Provenance and licences of the files are listed in ``scfound/datasets/data/README.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData

DATA_DIR = Path(__file__).parent / "data"


def _read(filename: str) -> AnnData:
    path = DATA_DIR / filename
    if not path.is_file():  # pragma: no cover - only on a broken installation
        raise FileNotFoundError(
            f"bundled dataset {filename!r} not found at {path}; the scfound installation is "
            "incomplete (reinstall the package)."
        )
    return ad.read_h5ad(path)


def osmfish() -> AnnData:
    """Mouse somatosensory cortex measured by osmFISH (Codeluppi et al. 2018).

    One tissue section: cells flagged valid, outside the source's "Excluded" region, with 476
    exact duplicate cells of the source file (same position and counts under another ID) removed.

    Returns
    -------
    AnnData with 4,363 cells x 33 genes:

    - ``.X`` and ``.layers['counts']``: raw integer counts (``float32``, CSR);
    - ``.obsm['spatial']``: cell centroids in pixels (1 px = 0.065 µm);
    - ``.obs['cell_type']``: 31 annotated cell types (categorical);
    - ``.obs['region']``: anatomical region / cortical layer (categorical);
    - ``.obs['valid']``, ``.obs['total_molecules']``, ``.obs['size_um2']``: source annotations;
    - ``.uns['dataset']``: name, technology and spatial unit.

    Examples
    --------
    >>> import scfound
    >>> adata = scfound.datasets.osmfish()
    >>> adata.shape
    (4363, 33)
    """
    return _read("osmfish_sscortex.h5ad")


def cosmx_lung12_mini() -> AnnData:
    """NanoString CosMx SMI non-small-cell lung cancer sample Lung12, two cropped FOVs.

    The public NanoString NSCLC dataset as cropped by the Giotto team (GiottoData, MIT licence).

    Returns
    -------
    AnnData with 120 cells x 960 genes:

    - ``.X`` and ``.layers['counts']``: raw integer counts (``float32``, CSR);
    - ``.obs['fov']``: field of view (categorical, 2 FOVs); ``.obs['cell_ID']``: cell ID in its FOV;
    - ``.obsm['spatial']``: global cell centroids in pixels (1 px = 0.18 µm);
    - ``.obsm['spatial_fov']``: centroids in pixels local to each FOV;
    - ``.obsm['negative_probes']`` with ``.uns['negative_probe_names']``: negative-control probe
      counts per cell;
    - ``.uns['dataset']``: name, technology and spatial unit.

    Examples
    --------
    >>> import scfound
    >>> adata = scfound.datasets.cosmx_lung12_mini()
    >>> adata.obs["fov"].nunique()
    2
    """
    return _read("cosmx_lung12_mini.h5ad")


def osmfish_halves(
    held_out: Sequence[str] = ("Plp1",), fraction: float = 0.5, seed: int = 0
) -> tuple[AnnData, AnnData]:
    """The osmFISH section split into a spatial query and a reference without coordinates.

    A stand-in, for examples and tests, for the usual pair of a spatial panel and a scRNA-seq
    reference of the same tissue: a random ``fraction`` of the cells becomes the reference (all
    genes, cell types, no coordinates); the other cells are the query, which lacks the genes
    ``held_out`` and its cell types, so that they can be imputed or annotated from the
    reference and scored.

    Parameters
    ----------
    held_out
        Genes removed from the query (their counts are kept in ``query.obsm["held_out"]``).
    fraction
        Fraction of the cells in the reference.
    seed
        Seed of the split.

    Returns
    -------
    ``(query, reference)``: the query with coordinates, counts of the other genes in
    ``layers["counts"]`` and ``obsm["held_out"]`` (a DataFrame of the held-out genes' counts);
    the reference with every gene and ``obs["cell_type"]``.

    Examples
    --------
    >>> import scfound
    >>> query, reference = scfound.datasets.osmfish_halves(["Plp1"])
    >>> "Plp1" in query.var_names, "Plp1" in reference.var_names
    (False, True)
    """
    adata = osmfish()
    held_out = [str(g) for g in held_out]
    absent = [g for g in held_out if g not in adata.var_names]
    if absent:
        raise ValueError(f"genes {absent} are not in the osmFISH panel {list(adata.var_names)}.")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}.")
    is_ref = np.random.default_rng(seed).random(adata.n_obs) < fraction
    reference = adata[is_ref].copy()
    del reference.obsm["spatial"]
    query = adata[~is_ref].copy()
    truth = query[:, held_out].layers["counts"]
    truth = truth.toarray() if hasattr(truth, "toarray") else np.asarray(truth)
    query = query[:, ~query.var_names.isin(held_out)].copy()
    query.obsm["held_out"] = pd.DataFrame(truth, index=query.obs_names, columns=held_out)
    query.obs = query.obs.drop(columns="cell_type")
    return query, reference
