"""Three-dimensional coordinates (x, y, z) in every spatial entry point."""

from __future__ import annotations

import warnings

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

import scfound as sf
from scfound._utils import get_spatial
from scfound.nn import POSITIONAL_ENCODINGS, knn_graph, positional_encoding

matplotlib.use("Agg")

TINY = {"n_hidden": 16, "n_heads": 2, "n_latent": 4, "n_layers": 1}


@pytest.fixture(scope="module")
def volume():
    return sf.datasets.synthetic_spatial(240, 16, 3, seed=0, n_fovs=2, n_dims=3)


def _layers(z_values, n_side=4, spacing=10.0):
    """A grid of ``n_side x n_side`` cells repeated at each z of ``z_values``."""
    xs, ys = np.meshgrid(np.arange(n_side) * spacing, np.arange(n_side) * spacing)
    xy = np.c_[xs.ravel(), ys.ravel()]
    return np.concatenate([np.c_[xy, np.full(len(xy), z)] for z in z_values])


# ------------------------------------------------------------------------ coordinates
def test_synthetic_volume_is_3d_and_2d_default_unchanged(volume):
    assert volume.obsm["spatial"].shape == (240, 3)
    extent = np.ptp(volume.obsm["spatial"], axis=0)
    assert extent[2] > 0.5 * extent[:2].max()  # a volume, not a thin slab
    flat = sf.datasets.synthetic_spatial(240, 16, 3, seed=0, n_fovs=2)
    assert flat.obsm["spatial"].shape == (240, 2)
    with pytest.raises(ValueError, match=r"`n_dims` must be 2 .* or 3 .*, got 4"):
        sf.datasets.synthetic_spatial(50, 5, 2, n_dims=4)


@pytest.mark.parametrize("n_cols", [1, 4])
def test_bad_numbers_of_columns_are_refused(volume, n_cols):
    adata = volume.copy()
    adata.obsm["bad"] = np.zeros((adata.n_obs, n_cols))
    pattern = (
        rf"adata.obsm\['bad'\] must have shape \(n_obs, 2\) .* \(n_obs, 3\) .*\(240, {n_cols}\)"
    )
    with pytest.raises(ValueError, match=pattern):
        get_spatial(adata, "bad")
    with pytest.raises(ValueError, match=pattern):
        sf.SpaFormer.setup_anndata(adata, layer="counts", spatial_key="bad")
    with pytest.raises(ValueError, match=pattern):
        sf.pp.spatial_tiles(adata, n_tiles=2, spatial_key="bad")
    with pytest.raises(ValueError, match=pattern):
        sf.pp.spatial_graph(adata, spatial_key="bad")
    with pytest.raises(
        ValueError, match=r"must have shape \(n_obs, 2\) or \(n_obs, 3\) for CellPLM"
    ):
        sf.CellPLM.setup_anndata(adata, layer="counts", spatial_key="bad")
    assert "bad" in adata.obsm and not [c for c in adata.obs.columns if c.startswith("_scvi")]


def test_nan_and_strings_in_3d_are_refused(volume):
    adata = volume.copy()
    adata.obsm["nan"] = np.array(adata.obsm["spatial"], dtype=float)
    adata.obsm["nan"][3, 2] = np.nan
    with pytest.raises(ValueError, match=r"adata.obsm\['nan'\] contains NaN"):
        sf.SpaFormer.setup_anndata(adata, layer="counts", spatial_key="nan")
    adata.obsm["text"] = np.array([["a", "b", "c"]] * adata.n_obs)
    with pytest.raises(ValueError, match=r"adata.obsm\['text'\] must hold numbers"):
        sf.pp.spatial_tiles(adata, n_tiles=2, spatial_key="text")


def test_build_corpus_keeps_z_and_refuses_mixed_axes(volume):
    section = sf.datasets.synthetic_spatial(60, 16, 3, seed=1)
    reference = section.copy()
    del reference.obsm["spatial"]
    corpus = sf.pp.build_corpus({"v": volume, "r": reference}, layer="counts")
    coords = corpus.obsm["spatial"]
    assert coords.shape == (volume.n_obs + reference.n_obs, 3)
    np.testing.assert_array_equal(coords[: volume.n_obs], volume.obsm["spatial"])
    assert np.isnan(coords[volume.n_obs :]).all()
    with pytest.raises(ValueError, match=r"2 columns \(x, y\) in some datasets and 3"):
        sf.pp.build_corpus({"v": volume, "s": section}, layer="counts")


# -------------------------------------------------------------------------- graphs
def test_3d_graph_connects_cells_across_z_where_close():
    coords = _layers([0.0, 10.0, 500.0])  # two close layers and one far away
    adata = sf.datasets.synthetic_spatial(len(coords), 5, 2, seed=0)
    adata.obsm["spatial"] = coords
    sf.pp.spatial_graph(adata, n_neighs=5)
    graph = adata.obsp["spatial_connectivities"].tocoo()
    z = coords[:, 2]
    across = z[graph.row] != z[graph.col]
    close = np.isin(z[graph.row], [0.0, 10.0]) & np.isin(z[graph.col], [0.0, 10.0])
    assert (across & close).sum() >= 16  # each cell has its twin above or below
    assert not (across & ~close).any()  # nothing reaches the far layer
    # each cell's neighbour straight above/below (same x, y) is among its neighbours
    twins = across & np.all(coords[graph.row, :2] == coords[graph.col, :2], axis=1)
    assert twins.sum() >= 32
    # dropping z would merge the two close layers into one plane: no such "across" distinction
    adata.obs["section"] = pd.Categorical(z.astype(int).astype(str))
    sf.pp.spatial_graph(adata, n_neighs=5, group_key="section")
    graph = adata.obsp["spatial_connectivities"].tocoo()
    assert (z[graph.row] == z[graph.col]).all()  # sections as groups: no edge across z
    # the model's own graph (inside each step) is 3-D too
    edges = knn_graph(torch.tensor(coords[:32], dtype=torch.float32), 5).numpy()
    assert (z[edges[0]] != z[edges[1]]).any()


def test_spatial_scale_changes_the_graph_and_tiny_z_warns():
    coords = _layers([0.0, 1.0], n_side=6, spacing=30.0)  # z: section numbers, x/y: µm
    adata = sf.datasets.synthetic_spatial(len(coords), 5, 2, seed=0)
    adata.obsm["spatial"] = coords
    with pytest.warns(UserWarning, match=r"z extent .*spatial_scale=\(1, 1, s\)"):
        sf.pp.spatial_graph(adata, n_neighs=1)
    z = coords[:, 2]
    g = adata.obsp["spatial_connectivities"].tocoo()
    assert (z[g.row] != z[g.col]).all()  # unscaled: the twin 1 unit away is the nearest
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sf.pp.spatial_graph(adata, n_neighs=1, spatial_scale=(1, 1, 100))  # sections 100 µm apart
    g = adata.obsp["spatial_connectivities"].tocoo()
    assert (z[g.row] == z[g.col]).all()  # neighbours within a layer now
    assert adata.uns["scfound"]["spatial_graph"]["spatial_connectivities"]["spatial_scale"] == [
        1.0,
        1.0,
        100.0,
    ]
    with pytest.raises(ValueError, match=r"`spatial_scale` must hold 3 positive"):
        sf.pp.spatial_graph(adata, spatial_scale=(1, 5))


# --------------------------------------------------------------------------- tiles
def test_spatial_tiles_cut_a_volume_into_blocks(volume):
    adata = volume.copy()
    sf.pp.spatial_tiles(adata, n_tiles=8)
    labels = adata.obs["spatial_tile"]
    assert labels.nunique() == 8 and all(len(c.split("_")) == 3 for c in labels.cat.categories)
    coords = adata.obsm["spatial"]
    for _, cells in adata.obs.groupby("spatial_tile", observed=True).indices.items():
        # a block spans about half of the volume along every axis
        assert np.all(np.ptp(coords[cells], axis=0) < 0.6 * np.ptp(coords, axis=0))
    run = adata.uns["scfound"]["spatial_tiles"]["spatial_tile"]
    assert run["grid_shape"] == [2, 2, 2] and len(run["tile_extent"]) == 3
    # slabs along z: one size per axis
    sf.pp.spatial_tiles(adata, tile_size=(1e6, 1e6, np.ptp(coords[:, 2]) / 3), key_added="slab")
    assert adata.obs["slab"].nunique() == 3
    for _, cells in adata.obs.groupby("slab", observed=True).indices.items():
        assert np.ptp(coords[cells, 0]) > 0.9 * np.ptp(coords[:, 0])
    # a thin volume is cut into columns through its depth
    thin = volume.copy()
    thin.obsm["spatial"] = thin.obsm["spatial"] * np.array([1.0, 1.0, 0.05])
    sf.pp.spatial_tiles(thin, n_tiles=4)
    assert thin.uns["scfound"]["spatial_tiles"]["spatial_tile"]["grid_shape"][0] == 1
    assert thin.obs["spatial_tile"].nunique() == 4
    with pytest.raises(ValueError, match=r"`tile_size` must be a positive number or 3"):
        sf.pp.spatial_tiles(adata, tile_size=(10, 10))


# --------------------------------------------------------------------------- models
def test_every_encoding_reads_z():
    coords = torch.rand(40, 3)
    lifted = coords.clone()
    lifted[:5, 2] += 0.3
    h = torch.randn(40, 12)
    for name in ("learnable", "sinusoid", "sinusoid_coord", "naive"):
        torch.manual_seed(0)
        pe = positional_encoding(name, 12, n_dims=3).eval()
        out, moved = pe(h, coords), pe(h, lifted)
        assert out.shape == (40, 12)
        assert not torch.allclose(out[:5], moved[:5]), name
        assert torch.allclose(out[5:], moved[5:]), name


@pytest.mark.parametrize("pos_encoding", sorted(POSITIONAL_ENCODINGS))
def test_each_encoding_trains_in_3d_and_round_trips(volume, pos_encoding, tmp_path):
    adata = volume.copy()
    sf.SpaFormer.setup_anndata(adata, layer="counts", group_key="fov")
    model = sf.SpaFormer(adata, pos_encoding=pos_encoding, spatial_scale=(1, 1, 2), **TINY)
    assert model.module.n_spatial_dims == 3
    model.train(max_epochs=1, enable_progress_bar=False, seed=0)
    imputed = model.get_imputed_expression()
    assert imputed.shape == (adata.n_obs, adata.n_vars) and np.isfinite(imputed.to_numpy()).all()
    model.save(tmp_path / "m", overwrite=True)
    loaded = sf.SpaFormer.load(tmp_path / "m", adata=adata)
    assert loaded.module.spatial_scale == (1.0, 1.0, 2.0)
    np.testing.assert_allclose(loaded.get_imputed_expression(), imputed, rtol=1e-5, atol=1e-6)
    flat = adata.copy()
    flat.obsm["spatial"] = flat.obsm["spatial"][:, :2].copy()
    with pytest.raises(ValueError, match=r"3-D coordinates|column count of 3"):
        loaded.get_imputed_expression(flat)


def test_spatial_scale_checks_and_warning(volume):
    adata = volume.copy()
    adata.obsm["spatial"] = adata.obsm["spatial"] * np.array([1.0, 1.0, 1e-3], dtype=np.float32)
    sf.SpaFormer.setup_anndata(adata, layer="counts", group_key="fov")
    with pytest.warns(UserWarning, match=r"SpaFormer: the z extent"):
        sf.SpaFormer(adata, **TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model = sf.SpaFormer(adata, spatial_scale=(1, 1, 1000), **TINY)
    assert model.module.spatial_scale == (1.0, 1.0, 1000.0)
    assert (1.0, 1.0, 1000.0) in [v for part in model.init_params_.values() for v in part.values()]
    with pytest.raises(ValueError, match=r"`spatial_scale` must hold 3 positive finite"):
        sf.SpaFormer(adata, spatial_scale=(1, 1), **TINY)
    with pytest.raises(ValueError, match=r"`spatial_scale` must hold 3 positive finite"):
        sf.SpaFormer(adata, spatial_scale=(1, 1, -5), **TINY)


def test_sections_as_groups_and_tiles_in_tl(volume):
    adata = volume.copy()
    z = adata.obsm["spatial"][:, 2]
    adata.obs["section"] = pd.Categorical(np.digitize(z, np.quantile(z, [0.5])).astype(str))
    sf.tl.impute(adata, layer="counts", group_key="section", max_epochs=1, model_kwargs=TINY)
    assert adata.layers["spaformer_imputed"].shape == adata.shape
    sf.tl.impute(adata, layer="counts", max_epochs=1, model_kwargs=TINY, key_added="tiled")
    assert np.isfinite(np.asarray(adata.layers["tiled"])).all()


def test_cellplm_encodes_z(volume):
    from scfound.models.cellplm._components import GeneExpressionEmbedder

    torch.manual_seed(0)
    embedder = GeneExpressionEmbedder(10, 16, dropout=0.0, norm="none").eval()
    x = torch.rand(30, 10)
    coords = torch.rand(30, 3)
    lifted = coords.clone()
    lifted[:4, 2] = 1.5  # the top of the volume
    ids = torch.arange(10)
    assert not torch.allclose(embedder(x, ids, coords), embedder(x, ids, lifted))
    adata = volume.copy()
    sf.CellPLM.setup_anndata(adata, layer="counts", group_key="fov", spatial_key="spatial")
    model = sf.CellPLM(adata, n_hidden=16, n_layers=1, n_heads=2, n_latent=4, n_clusters=2)
    model.train(max_epochs=1, enable_progress_bar=False)
    assert model.get_latent_representation().shape == (adata.n_obs, 4)


def test_stai_uses_the_3d_graph(volume):
    adata = volume[:, :12].copy()
    sf.STAI.setup_anndata(adata, layer="counts", spatial_key="spatial")
    reference = volume.copy()
    del reference.obsm["spatial"]
    sf.STAI.setup_anndata(reference, layer="counts", labels_key="cell_type")
    model = sf.STAI(adata, reference, n_neighbors=4)
    graph = model._adjacency.tocoo()
    coords = adata.obsm["spatial"].astype(np.float64)
    dist = np.linalg.norm(coords[graph.row] - coords[graph.col], axis=1)
    flat = np.linalg.norm(coords[graph.row, :2] - coords[graph.col, :2], axis=1)
    assert graph.nnz > 0 and np.all(dist >= flat)
    # each cell's nearest neighbour in the volume is joined to it
    from scipy.spatial import cKDTree

    _, nearest = cKDTree(coords).query(coords, k=2)
    assert np.all(np.asarray(model._adjacency[np.arange(len(coords)), nearest[:, 1]]).ravel() > 0)


def test_stai_spatial_scale_builds_the_graph_on_scaled_axes_and_is_saved(volume, tmp_path):
    adata = volume[:, :12].copy()
    sf.STAI.setup_anndata(adata, layer="counts", spatial_key="spatial")
    reference = volume.copy()
    del reference.obsm["spatial"]
    sf.STAI.setup_anndata(reference, layer="counts", labels_key="cell_type")
    scale = (1.0, 1.0, 50.0)
    model = sf.STAI(adata, reference, n_neighbors=4, spatial_scale=scale)
    scaled = adata.obsm["spatial"].astype(np.float64) * np.asarray(scale)
    graph = model._adjacency.tocoo()
    # a z scale this large leaves neighbours (nearly) in the same z plane
    dz = np.abs(scaled[graph.row, 2] - scaled[graph.col, 2])
    unscaled = sf.STAI(adata, reference, n_neighbors=4)._adjacency.tocoo()
    dz_unscaled = np.abs(scaled[unscaled.row, 2] - scaled[unscaled.col, 2])
    assert dz.mean() < dz_unscaled.mean()
    model.save(tmp_path / "stai")
    loaded = sf.STAI.load(tmp_path / "stai", adata, reference)
    assert loaded.spatial_scale == scale
    assert (loaded._adjacency != model._adjacency).nnz == 0
    with pytest.raises(ValueError, match="spatial_scale"):
        sf.STAI(adata, reference, spatial_scale=(1, 1))


# ----------------------------------------------------------------- using z matters
def test_using_z_beats_dropping_it(volume):
    """Neighbours in the volume predict a cell's expression better than neighbours in x, y."""
    adata = sf.datasets.synthetic_spatial(1500, 30, 4, seed=3, n_dims=3)
    counts = np.asarray(adata.layers["counts"])
    logn = np.log1p(counts / counts.sum(1, keepdims=True) * np.median(counts.sum(1)))
    errors = {}
    for name, coords in (("xyz", adata.obsm["spatial"]), ("xy", adata.obsm["spatial"][:, :2])):
        tmp = adata.copy()
        tmp.obsm["spatial"] = np.ascontiguousarray(coords)
        sf.pp.spatial_graph(tmp, n_neighs=10)
        graph = tmp.obsp["spatial_connectivities"]
        pred = graph @ logn / np.asarray(graph.sum(1))
        errors[name] = float(np.sqrt(np.mean((pred - logn) ** 2)))
    assert errors["xyz"] < 0.97 * errors["xy"], errors


# --------------------------------------------------------------------------- plots
def test_imputed_genes_shows_z_slices_or_a_projection(volume):
    adata = volume.copy()
    adata.layers["spaformer_imputed"] = np.asarray(adata.layers["counts"]) + 1.0
    fig = sf.pl.imputed_genes(adata, ["gene_0", "gene_1"], show=False)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 2 * 3 * 2  # genes x slices x (measured, imputed)
    titles = [ax.get_title() for ax in panels if "measured" in ax.get_title()]
    n_shown = [int(t.split(", ")[-1].split(" ")[0]) for t in titles]
    assert sum(n_shown[:3]) == adata.n_obs  # default slices cover the volume once
    fig = sf.pl.imputed_genes(adata, "gene_0", z_slices=[20.0], slice_thickness=10, show=False)
    measured = fig.axes[0]
    z = adata.obsm["spatial"][:, 2]
    assert len(measured.collections[0].get_offsets()) == int((np.abs(z - 20.0) < 5).sum())
    fig = sf.pl.imputed_genes(adata, "gene_0", z_slices="projection", show=False)
    assert len(fig.axes[0].collections[0].get_offsets()) == adata.n_obs
    assert "projection" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match=r"z_slices must be a number of slices"):
        sf.pl.imputed_genes(adata, "gene_0", z_slices="middle", show=False)
    with pytest.raises(ValueError, match=r"slice_thickness must be a positive number"):
        sf.pl.imputed_genes(adata, "gene_0", slice_thickness=0, show=False)
