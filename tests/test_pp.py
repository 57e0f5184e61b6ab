import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scfound.datasets import synthetic_spatial
from scfound.pp import draw_holdout_mask, mask_entries, spatial_graph, spatial_tiles


def _grid_adata(n_side=10, spacing=1.0):
    """Cells on a regular n_side x n_side grid with coordinates 0 .. (n_side - 1) * spacing."""
    xs, ys = np.meshgrid(np.arange(n_side) * spacing, np.arange(n_side) * spacing)
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1)
    adata = ad.AnnData(X=np.ones((len(coords), 3), dtype=np.float32))
    adata.obsm["spatial"] = coords
    return adata


# ---------------------------------------------------------------- spatial_tiles


def test_spatial_tiles_tile_size():
    adata = _grid_adata(10)  # coordinates 0..9
    spatial_tiles(adata, tile_size=5.0)
    tiles = adata.obs["spatial_tile"]
    assert tiles.dtype == "category"
    assert all(isinstance(c, str) for c in tiles.cat.categories)
    assert tiles.nunique() == 4
    assert (tiles.value_counts() == 25).all()
    xy = adata.obsm["spatial"]
    # cells of one tile lie within one 5 x 5 square
    for t in tiles.cat.categories:
        sub = xy[(tiles == t).to_numpy()]
        assert np.all(sub.max(0) - sub.min(0) < 5)
    assert adata.uns["scfound"]["spatial_tiles"]["spatial_tile"]["tile_size"] == 5.0


def test_spatial_tiles_n_tiles_follows_aspect_ratio():
    rng = np.random.default_rng(0)
    adata = ad.AnnData(X=np.ones((2000, 2), dtype=np.float32))
    adata.obsm["spatial"] = rng.uniform(size=(2000, 2)) * [400.0, 100.0]
    spatial_tiles(adata, n_tiles=16, key_added="tile")
    tiles = adata.obs["tile"]
    assert tiles.nunique() == 16
    # 8 columns x 2 rows: each tile spans about 50 x 50
    assert adata.uns["scfound"]["spatial_tiles"]["tile"]["grid_shape"] == [2, 8]
    counts = tiles.value_counts()
    assert counts.min() > 0.6 * counts.mean()


def test_spatial_tiles_only_non_empty_tiles():
    adata = _grid_adata(10)
    keep = (adata.obsm["spatial"][:, 0] < 3) | (adata.obsm["spatial"][:, 0] > 6)
    adata = adata[keep].copy()  # empty middle column band
    spatial_tiles(adata, n_tiles=9)
    assert adata.obs["spatial_tile"].nunique() == 6
    assert (adata.obs["spatial_tile"].value_counts() > 0).all()


@pytest.mark.parametrize("kwargs", [{}, {"tile_size": 2.0, "n_tiles": 4}])
def test_spatial_tiles_needs_exactly_one_of_size_and_number(kwargs):
    adata = _grid_adata(4)
    with pytest.raises(ValueError, match="exactly one of `tile_size` and `n_tiles`"):
        spatial_tiles(adata, **kwargs)
    assert "spatial_tile" not in adata.obs


def test_spatial_tiles_merges_small_tiles():
    adata = _grid_adata(10)  # 4 tiles of 25 cells with tile_size=5
    # a lone cell far right of the bottom-right tile creates a tile with 1 cell
    lone = ad.AnnData(X=np.ones((1, 3), dtype=np.float32))
    lone.obs_names = ["lone"]
    lone.obsm["spatial"] = np.array([[12.0, 0.0]])
    adata = ad.concat([adata, lone])
    spatial_tiles(adata, tile_size=5.0)
    assert adata.obs["spatial_tile"].nunique() == 5
    spatial_tiles(adata, tile_size=5.0, min_cells=2)
    tiles = adata.obs["spatial_tile"]
    assert tiles.nunique() == 4
    lone_tile = tiles.iloc[-1]
    # merged into the tile at row 0, column 1 (centre (7.5, 2.5), the nearest)
    assert lone_tile == "0_1"
    assert (tiles == lone_tile).sum() == 26
    assert adata.uns["scfound"]["spatial_tiles"]["spatial_tile"]["n_tiles_merged"] == 1


def test_spatial_tiles_copy_leaves_original():
    adata = _grid_adata(6)
    before = adata.copy()
    out = spatial_tiles(adata, n_tiles=4, copy=True)
    assert isinstance(out, ad.AnnData)
    assert "spatial_tile" in out.obs
    assert "spatial_tile" not in adata.obs
    assert "scfound" not in adata.uns
    assert list(adata.obs.columns) == list(before.obs.columns)
    assert spatial_tiles(adata, n_tiles=4) is None
    assert "spatial_tile" in adata.obs


def test_spatial_tiles_errors():
    adata = _grid_adata(4)
    with pytest.raises(KeyError, match="obsm\\['xy'\\]"):
        spatial_tiles(adata, n_tiles=2, spatial_key="xy")
    with pytest.raises(ValueError, match="tile_size"):
        spatial_tiles(adata, tile_size=-1.0)
    with pytest.raises(ValueError, match="min_cells"):
        spatial_tiles(adata, n_tiles=2, min_cells=100)
    adata.obsm["spatial"][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        spatial_tiles(adata, n_tiles=2)


# ---------------------------------------------------------------- spatial_graph


def test_spatial_graph_knn_writes_squidpy_keys():
    adata = synthetic_spatial(n_cells=200, n_genes=5)
    obs_before = adata.obs.copy()
    spatial_graph(adata, n_neighs=5)
    conn = adata.obsp["spatial_connectivities"]
    dist = adata.obsp["spatial_distances"]
    assert sp.issparse(conn) and conn.shape == (200, 200)
    assert np.all(np.asarray((conn > 0).sum(1)).ravel() >= 5)
    assert adata.uns["spatial_neighbors"]["connectivities_key"] == "spatial_connectivities"
    assert adata.uns["scfound"]["spatial_graph"]["spatial_connectivities"]["n_neighs"] == 5
    # edges join each cell to its nearest cells
    xy = adata.obsm["spatial"]
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    nearest = d.argmin(1)
    assert np.all(np.asarray(conn[np.arange(200), nearest]).ravel() > 0)
    np.testing.assert_allclose(dist[0].data, d[0, dist[0].indices], rtol=1e-5)
    pd.testing.assert_frame_equal(adata.obs, obs_before)


def test_spatial_graph_respects_groups():
    adata = synthetic_spatial(n_cells=300, n_genes=5, n_fovs=4)
    adata.obs["fov"] = adata.obs["fov"].astype(str)  # non-categorical column is fine
    spatial_graph(adata, n_neighs=6, group_key="fov")
    conn = adata.obsp["spatial_connectivities"].tocoo()
    fov = adata.obs["fov"].to_numpy()
    assert conn.nnz > 0
    assert np.all(fov[conn.row] == fov[conn.col])
    assert adata.obs["fov"].dtype == object  # caller's column untouched
    # without groups, some edges cross FOV borders
    spatial_graph(adata, n_neighs=6)
    conn = adata.obsp["spatial_connectivities"].tocoo()
    assert np.any(fov[conn.row] != fov[conn.col])


def test_spatial_graph_radius():
    adata = _grid_adata(5, spacing=10.0)
    spatial_graph(adata, method="radius", radius=10.5)
    degree = np.asarray((adata.obsp["spatial_connectivities"] > 0).sum(1)).ravel()
    assert degree.max() == 4 and degree.min() == 2  # 4-neighbourhood on a grid


def test_spatial_graph_copy_and_errors():
    adata = synthetic_spatial(n_cells=100, n_genes=5, n_fovs=2)
    out = spatial_graph(adata, copy=True)
    assert "spatial_connectivities" in out.obsp
    assert "spatial_connectivities" not in adata.obsp
    with pytest.raises(ValueError, match="method"):
        spatial_graph(adata, method="delaunay")
    with pytest.raises(ValueError, match="radius"):
        spatial_graph(adata, method="radius")
    with pytest.raises(KeyError, match="'batch'"):
        spatial_graph(adata, group_key="batch")
    with pytest.raises(KeyError, match="obsm\\['coords'\\]"):
        spatial_graph(adata, spatial_key="coords")
    small = adata.copy()
    small.obs["g"] = pd.Categorical(["a"] * 97 + ["b"] * 3)
    with pytest.raises(ValueError, match="n_neighs"):
        spatial_graph(small, n_neighs=6, group_key="g")
    assert "spatial_connectivities" not in small.obsp


# ---------------------------------------------------------------- masks


def test_draw_holdout_mask_fraction_and_zeros():
    rng = np.random.default_rng(0)
    X = rng.poisson(0.5, size=(400, 50))
    mask = draw_holdout_mask(X, 0.3, np.random.default_rng(1))
    assert mask.dtype == bool and mask.shape == X.shape
    assert abs(mask.mean() - 0.3) < 0.02
    assert abs(mask[X == 0].mean() - 0.3) < 0.03  # zeros are held out too
    again = draw_holdout_mask(X, 0.3, np.random.default_rng(1))
    np.testing.assert_array_equal(mask, again)
    np.testing.assert_array_equal(mask, draw_holdout_mask(sp.csr_matrix(X), 0.3, 1))


def test_draw_holdout_mask_no_cell_left_empty():
    X = np.zeros((500, 10))
    X[:, 0] = 1  # every cell has a single non-zero entry
    X[:5] = 0  # empty cells stay free to be masked
    mask = draw_holdout_mask(X, 0.5, np.random.default_rng(0))
    kept_nonzero = ((X != 0) & ~mask).any(axis=1)
    assert np.all(kept_nonzero[5:])
    # cells whose only count was drawn are cleared entirely, others keep their draws
    assert (~mask[5:].any(axis=1)).sum() > 100
    assert mask[5:, 1:].any()
    sparse_mask = draw_holdout_mask(sp.csr_matrix(X), 0.5, np.random.default_rng(0))
    np.testing.assert_array_equal(mask, sparse_mask)


def test_draw_holdout_mask_eligible():
    X = np.ones((100, 10))
    eligible = np.zeros_like(X, dtype=bool)
    eligible[:, :5] = True
    mask = draw_holdout_mask(X, 0.5, np.random.default_rng(0), eligible=eligible)
    assert not mask[:, 5:].any()
    assert mask[:, :5].mean() > 0.3
    with pytest.raises(ValueError, match="eligible"):
        draw_holdout_mask(X, 0.5, 0, eligible=eligible[:, :5])


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_mask_entries(fmt):
    adata = synthetic_spatial(n_cells=300, n_genes=40, seed=0)
    counts = adata.layers["counts"].copy()
    if fmt != "dense":
        adata.layers["counts"] = sp.csr_matrix(counts).asformat(fmt)
    original = adata.layers["counts"].copy()
    mask_entries(adata, 0.3, layer="counts", seed=1)
    mask = adata.layers["heldout"]
    masked = adata.layers["heldout_counts"]
    assert mask.dtype == bool and mask.shape == adata.shape
    assert abs(mask.mean() - 0.3) < 0.02
    if fmt == "dense":
        assert isinstance(masked, np.ndarray)
        dense_masked = masked
    else:
        assert sp.issparse(masked) and masked.format == fmt
        assert np.all(masked.data != 0)  # explicit zeros removed
        dense_masked = masked.toarray()
    assert dense_masked.dtype == np.float32
    np.testing.assert_array_equal(dense_masked[mask], 0)
    np.testing.assert_array_equal(dense_masked[~mask], counts[~mask])
    assert np.all(dense_masked.sum(1) > 0)  # no cell left empty
    # input layer untouched
    if fmt == "dense":
        np.testing.assert_array_equal(adata.layers["counts"], original)
    else:
        np.testing.assert_array_equal(adata.layers["counts"].toarray(), original.toarray())
    info = adata.uns["scfound"]["mask_entries"]["heldout"]
    assert info["n_heldout"] == mask.sum()
    assert info["fraction"] == 0.3


def test_mask_entries_on_x_copy_and_seed():
    adata = synthetic_spatial(n_cells=100, n_genes=20)
    out = mask_entries(adata, 0.2, seed=5, key_added="val", copy=True)
    assert "val" in out.layers and "val_counts" in out.layers
    assert "val" not in adata.layers and "scfound" not in adata.uns
    out2 = mask_entries(adata, 0.2, seed=5, key_added="val", copy=True)
    np.testing.assert_array_equal(out.layers["val"], out2.layers["val"])
    out3 = mask_entries(adata, 0.2, seed=6, key_added="val", copy=True)
    assert not np.array_equal(out.layers["val"], out3.layers["val"])


def test_mask_entries_errors():
    adata = synthetic_spatial(n_cells=50, n_genes=10)
    for fraction in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            mask_entries(adata, fraction)
    with pytest.raises(KeyError, match="'raw_counts'"):
        mask_entries(adata, layer="raw_counts")
    with pytest.raises(ValueError, match="overwrite"):
        mask_entries(adata, layer="counts", key_added="counts")
    bad = adata.copy()
    bad.X[0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        mask_entries(bad)
    bad.X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mask_entries(bad)
    assert "heldout" not in bad.layers
    assert "scfound" not in bad.uns


def test_knn_smoothing_matrix_averages_over_cells_of_the_same_type():
    from scfound.pp import knn_smoothing_matrix

    data = synthetic_spatial(400, 200, 4, seed=0)
    counts = data.layers["counts"]
    S = knn_smoothing_matrix(counts, n_neighbors=10)
    assert S.shape == (400, 400) and sp.issparse(S)
    np.testing.assert_allclose(np.asarray(S.sum(1)).ravel(), 1.0, rtol=1e-6)
    assert (S.getnnz(axis=1) == 10).all()
    assert (S.diagonal() > 0).mean() > 0.99  # each cell is among its own neighbours
    types = data.obs["cell_type"].to_numpy()
    rows, cols = S.nonzero()
    assert (types[rows] == types[cols]).mean() > 0.9
    identity = knn_smoothing_matrix(sp.csr_matrix(counts), n_neighbors=1)
    assert (identity.diagonal() == 1).mean() > 0.99


def test_knn_smoothing_matrix_errors():
    from scfound.pp import knn_smoothing_matrix

    counts = synthetic_spatial(50, 20, 2, seed=0).layers["counts"]
    with pytest.raises(ValueError, match="positive integer"):
        knn_smoothing_matrix(counts, n_neighbors=0)
    with pytest.raises(ValueError, match="negative"):
        knn_smoothing_matrix(-np.asarray(counts), n_neighbors=5)
    with pytest.raises(ValueError, match="vary across cells"):
        knn_smoothing_matrix(np.ones((10, 5)), n_neighbors=5)
