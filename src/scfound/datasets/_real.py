"""Small real spatial datasets shipped inside the package (no network needed).

Provenance and licences of the files are listed in ``scfound/datasets/data/README.md``.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
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
