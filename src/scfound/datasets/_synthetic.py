"""Synthetic spatial count data with spatially structured cell types."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import cKDTree

# Matrices with at most this many entries are returned dense, larger ones as CSR.
_DENSE_MAX_ENTRIES = 10_000_000
# Average distance between neighbouring cells, in µm.
_CELL_SPACING_UM = 10.0
# Average number of cells per spatial domain.
_CELLS_PER_DOMAIN = 250
# Fraction of cells whose type is drawn at random instead of from their domain.
_MIXING = 0.1
# Entries generated per chunk, to bound memory for large datasets.
_CHUNK_ENTRIES = 2_000_000


def synthetic_spatial(
    n_cells: int = 2000,
    n_genes: int = 100,
    n_groups: int = 5,
    seed: int = 0,
    *,
    n_fovs: int = 1,
    mean_library_size: float | None = None,
    sparse: bool | None = None,
    n_dims: int = 2,
) -> AnnData:
    """Simulate a spatial transcriptomics section with cell types laid out as spatial domains.

    Cells are placed uniformly at random in a square, one cell per 100 µm² on average.
    The square is partitioned into spatial domains (a Voronoi tessellation of random centres,
    about 250 cells each, with fuzzy borders); every domain has one cell type, and 10% of cells
    take a random type instead (mixing). Each type has its own expression programme: log-normal
    gene means, half of the genes being markers of one type (4-fold up). A smooth random spatial
    field (random Fourier features) modulates expression within types. Counts are
    negative-binomial (Poisson-gamma, gene-wise dispersion) around these means, scaled by a
    log-normal library size. Neighbouring cells are therefore more similar than random pairs.

    Parameters
    ----------
    n_cells
        Number of cells.
    n_genes
        Number of genes.
    n_groups
        Number of cell types (spatial domain types).
    seed
        Random seed; the same arguments give the same data.
    n_fovs
        Number of fields of view: the square is cut into a grid of ``n_fovs`` near-equal
        rectangles (rows of FOVs, row-major numbering).
    mean_library_size
        Mean total counts per cell; default ``min(5 * n_genes, 500)``.
    sparse
        Return CSR matrices (``True``) or dense arrays (``False``). Default: dense when
        ``n_cells * n_genes <= 10_000_000``, CSR otherwise (e.g. 200,000 cells x 1,000 genes).
    n_dims
        ``2``: a square section (x, y). ``3``: a cubic volume (x, y, z), one cell per
        1,000 µm³ on average, whose domains are 3-D (a Voronoi tessellation in the volume) and
        whose smooth field varies along z as along x and y, so cells above one another differ
        as much as cells side by side. FOVs are columns through the volume (an x/y grid).

    Returns
    -------
    AnnData with

    - ``.X`` and ``.layers['counts']`` (separate copies): integer-valued ``float32`` counts;
    - ``.obsm['spatial']``: ``(n_cells, n_dims)`` coordinates in µm;
    - ``.obs['cell_type']``: categorical, ``'type_0'`` ... ``f'type_{n_groups - 1}'``;
    - ``.obs['fov']``: categorical, ``'0'`` ... ``str(n_fovs - 1)``;
    - ``.uns['dataset']``: name, spatial unit and the generating arguments.

    Examples
    --------
    >>> import scfound
    >>> adata = scfound.datasets.synthetic_spatial(n_cells=500, n_genes=50, n_fovs=4)
    >>> adata.obs["fov"].nunique()
    4
    """
    _check_positive_int(n_cells=n_cells, n_genes=n_genes, n_groups=n_groups, n_fovs=n_fovs)
    if n_groups > n_cells:
        raise ValueError(f"`n_groups` ({n_groups}) must not exceed `n_cells` ({n_cells}).")
    if n_fovs > n_cells:
        raise ValueError(f"`n_fovs` ({n_fovs}) must not exceed `n_cells` ({n_cells}).")
    if n_dims not in (2, 3) or isinstance(n_dims, bool):
        raise ValueError(f"`n_dims` must be 2 (a section) or 3 (a volume), got {n_dims!r}.")
    if mean_library_size is None:
        mean_library_size = float(min(5 * n_genes, 500))
    if not mean_library_size > 0:
        raise ValueError(f"`mean_library_size` must be positive, got {mean_library_size}.")
    if sparse is None:
        sparse = n_cells * n_genes > _DENSE_MAX_ENTRIES

    rng = np.random.default_rng(seed)
    if n_dims == 2:
        side = _CELL_SPACING_UM * np.sqrt(n_cells)
    else:
        side = _CELL_SPACING_UM * np.cbrt(n_cells)
    coords = rng.uniform(0.0, side, size=(n_cells, n_dims))

    # Spatial domains: nearest random centre of a jittered position (fuzzy borders).
    n_domains = max(n_groups, round(n_cells / _CELLS_PER_DOMAIN))
    domain_scale = side / (np.sqrt(n_domains) if n_dims == 2 else np.cbrt(n_domains))
    centres = rng.uniform(0.0, side, size=(n_domains, n_dims))
    domain_type = np.concatenate(
        [rng.permutation(n_groups), rng.integers(0, n_groups, n_domains - n_groups)]
    )
    domain_type = rng.permutation(domain_type)
    jittered = coords + rng.normal(0.0, 0.15 * domain_scale, size=coords.shape)
    _, nearest = cKDTree(centres).query(jittered)
    types = domain_type[nearest]
    mixed = rng.random(n_cells) < _MIXING
    types[mixed] = rng.integers(0, n_groups, int(mixed.sum()))

    # Expression programmes per type (proportions of the library).
    log_base = rng.normal(0.0, 1.0, n_genes)
    log_fc = rng.normal(0.0, 0.5, size=(n_groups, n_genes))
    order = rng.permutation(n_genes)
    markers = order[: n_genes // 2]
    log_fc[markers % n_groups, markers] += np.log(4.0)
    programmes = log_base[None, :] + log_fc

    # Smooth spatial field modulating expression within types.
    n_features = 6
    omega = rng.normal(0.0, 1.0 / domain_scale, size=(n_dims, n_features))
    phase = rng.uniform(0.0, 2 * np.pi, n_features)
    loadings = rng.normal(0.0, 0.4, size=(n_features, n_genes))

    sigma = 0.35
    library = mean_library_size * rng.lognormal(-0.5 * sigma**2, sigma, n_cells)
    theta = rng.lognormal(np.log(5.0), 0.3, n_genes)
    theta32 = theta.astype(np.float32)

    chunk = max(1, _CHUNK_ENTRIES // n_genes)
    blocks = []
    for start in range(0, n_cells, chunk):
        sl = slice(start, min(start + chunk, n_cells))
        field = np.sqrt(2.0 / n_features) * np.cos(coords[sl] @ omega + phase)
        logits = programmes[types[sl]] + field @ loadings
        rate = np.exp(logits - logits.max(axis=1, keepdims=True))
        mu = library[sl, None] * rate / rate.sum(axis=1, keepdims=True)
        # Poisson-gamma (negative binomial with inverse dispersion theta and mean mu).
        gamma = rng.standard_gamma(np.broadcast_to(theta32, mu.shape), dtype=np.float32)
        counts = rng.poisson(gamma * (mu / theta)).astype(np.float32)
        blocks.append(sp.csr_matrix(counts) if sparse else counts)
    X = sp.vstack(blocks, format="csr") if sparse else np.concatenate(blocks, axis=0)

    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(
                types, categories=[f"type_{k}" for k in range(n_groups)]
            ),
            "fov": pd.Categorical.from_codes(
                _fov_grid(coords, side, n_fovs), categories=[str(f) for f in range(n_fovs)]
            ),
        },
        index=pd.Index([f"cell_{i}" for i in range(n_cells)]),
    )
    var = pd.DataFrame(index=pd.Index([f"gene_{j}" for j in range(n_genes)]))
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.layers["counts"] = X.copy()
    adata.obsm["spatial"] = coords.astype(np.float32)
    adata.uns["dataset"] = {
        "name": "synthetic spatial (scfound.datasets.synthetic_spatial)",
        "spatial_unit": "um",
        "n_groups": n_groups,
        "n_fovs": n_fovs,
        "seed": seed,
        "mean_library_size": mean_library_size,
    }
    if n_dims == 3:
        adata.uns["dataset"]["n_dims"] = 3
    return adata


def _fov_grid(coords: np.ndarray, side: float, n_fovs: int) -> np.ndarray:
    """FOV index of each cell: rows of near-equal rectangles, numbered row-major."""
    n_rows = max(1, round(np.sqrt(n_fovs)))
    n_cols = np.full(n_rows, n_fovs // n_rows)
    n_cols[: n_fovs % n_rows] += 1
    offsets = np.concatenate([[0], np.cumsum(n_cols)[:-1]])
    row = np.minimum((coords[:, 1] / side * n_rows).astype(int), n_rows - 1)
    col = np.minimum((coords[:, 0] / side * n_cols[row]).astype(int), n_cols[row] - 1)
    return (offsets[row] + col).astype(np.int64)


def _check_positive_int(**kwargs: int) -> None:
    for name, value in kwargs.items():
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
