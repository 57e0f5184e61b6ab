import numpy as np
import pytest
import scipy.sparse as sp
from scipy.spatial import cKDTree

import scfound
from scfound.datasets import cosmx_lung12_mini, osmfish, synthetic_spatial


def _as_dense(X):
    return X.toarray() if sp.issparse(X) else np.asarray(X)


def test_osmfish_shape_and_keys():
    adata = osmfish()
    assert adata.shape == (4363, 33)
    assert adata.obsm["spatial"].shape == (4363, 2)
    assert adata.obs["cell_type"].dtype == "category"
    assert adata.obs["cell_type"].nunique() == 31
    assert "region" in adata.obs
    counts = _as_dense(adata.layers["counts"])
    assert counts.dtype == np.float32
    np.testing.assert_array_equal(counts, np.round(counts))
    np.testing.assert_array_equal(counts, _as_dense(adata.X))


def test_cosmx_shape_and_keys():
    adata = cosmx_lung12_mini()
    assert adata.shape == (120, 960)
    assert adata.obs["fov"].nunique() == 2
    assert adata.obsm["spatial"].shape == (120, 2)
    assert adata.obsm["spatial_fov"].shape == (120, 2)
    assert "counts" in adata.layers


def test_datasets_exported_from_package():
    assert scfound.datasets.synthetic_spatial is synthetic_spatial


def test_synthetic_shape_keys_and_counts():
    adata = synthetic_spatial(n_cells=300, n_genes=40, n_groups=4, seed=1, n_fovs=4)
    assert adata.shape == (300, 40)
    assert isinstance(adata.X, np.ndarray)
    assert adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X, np.round(adata.X))
    assert adata.X.min() >= 0
    assert adata.X.sum(axis=1).min() > 0
    np.testing.assert_array_equal(adata.X, adata.layers["counts"])
    assert not np.shares_memory(adata.X, adata.layers["counts"])
    assert adata.obsm["spatial"].shape == (300, 2)
    assert list(adata.obs["cell_type"].cat.categories) == [f"type_{k}" for k in range(4)]
    assert adata.obs["cell_type"].nunique() == 4
    assert list(adata.obs["fov"].cat.categories) == ["0", "1", "2", "3"]
    assert adata.obs["fov"].value_counts().min() > 30


@pytest.mark.parametrize("n_fovs", [1, 3, 5])
def test_synthetic_fovs_are_spatial_blocks(n_fovs):
    adata = synthetic_spatial(n_cells=500, n_genes=10, n_fovs=n_fovs)
    fov = adata.obs["fov"]
    assert list(fov.cat.categories) == [str(f) for f in range(n_fovs)]
    assert fov.value_counts().min() > 0.5 * 500 / n_fovs
    # each FOV is a rectangle: bounding boxes of different FOVs do not overlap
    xy = adata.obsm["spatial"]
    boxes = [(xy[fov == f].min(0), xy[fov == f].max(0)) for f in fov.cat.categories]
    for i in range(n_fovs):
        for j in range(i + 1, n_fovs):
            (lo1, hi1), (lo2, hi2) = boxes[i], boxes[j]
            assert np.any(hi1 < lo2) or np.any(hi2 < lo1)


def test_synthetic_reproducible_by_seed():
    a = synthetic_spatial(n_cells=200, n_genes=20, seed=3)
    b = synthetic_spatial(n_cells=200, n_genes=20, seed=3)
    c = synthetic_spatial(n_cells=200, n_genes=20, seed=4)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])
    assert (a.obs["cell_type"] == b.obs["cell_type"]).all()
    assert not np.array_equal(a.X, c.X)


def test_synthetic_sparse_matches_dense():
    dense = synthetic_spatial(n_cells=200, n_genes=30, seed=2, sparse=False)
    csr = synthetic_spatial(n_cells=200, n_genes=30, seed=2, sparse=True)
    assert sp.issparse(csr.X) and csr.X.format == "csr"
    assert csr.X.dtype == np.float32
    np.testing.assert_array_equal(csr.X.toarray(), dense.X)
    np.testing.assert_array_equal(csr.layers["counts"].toarray(), dense.X)


def test_synthetic_is_spatially_structured():
    adata = synthetic_spatial(n_cells=2000, n_genes=50, n_groups=5, seed=0)
    xy = adata.obsm["spatial"]
    types = adata.obs["cell_type"].cat.codes.to_numpy()
    _, nn = cKDTree(xy).query(xy, k=7)
    agreement = (types[nn[:, 1:]] == types[:, None]).mean()
    chance = ((np.bincount(types) / len(types)) ** 2).sum()
    assert agreement > 2.5 * chance

    # neighbouring cells have more similar expression profiles than random pairs
    X = np.log1p(adata.X / adata.X.sum(1, keepdims=True) * 500)
    X = (X - X.mean(0)) / X.std(0)
    rng = np.random.default_rng(0)
    random_partner = rng.permutation(len(X))
    corr_nn = np.mean(np.sum(X * X[nn[:, 1]], axis=1))
    corr_random = np.mean(np.sum(X * X[random_partner], axis=1))
    assert corr_nn > corr_random + 0.1 * X.shape[1]


def test_synthetic_cell_types_have_distinct_programmes():
    adata = synthetic_spatial(n_cells=1000, n_genes=50, n_groups=3, seed=0)
    types = adata.obs["cell_type"].to_numpy()
    X = adata.X / adata.X.sum(1, keepdims=True)
    means = np.stack([X[types == t].mean(0) for t in ["type_0", "type_1", "type_2"]])
    fold = np.log2(means.max(0) / means.min(0))
    assert np.sum(fold > 1) >= 10


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_cells": 0}, "n_cells"),
        ({"n_cells": 3, "n_groups": 5}, "n_groups"),
        ({"n_cells": 10, "n_fovs": 20}, "n_fovs"),
        ({"n_genes": 2.5}, "n_genes"),
        ({"mean_library_size": -1.0}, "mean_library_size"),
    ],
)
def test_synthetic_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic_spatial(**kwargs)


def test_osmfish_halves_split_cells_and_hold_out_genes():
    query, reference = scfound.datasets.osmfish_halves(["Plp1", "Sox10"], seed=1)
    osm = osmfish()
    assert query.n_obs + reference.n_obs == osm.n_obs
    assert not set(query.obs_names) & set(reference.obs_names)
    assert {"Plp1", "Sox10"} & set(query.var_names) == set()
    assert list(reference.var_names) == list(osm.var_names)
    assert "spatial" in query.obsm and "spatial" not in reference.obsm
    assert "cell_type" not in query.obs and "cell_type" in reference.obs
    held = query.obsm["held_out"]
    truth = osm[query.obs_names].obs_vector("Plp1", layer="counts")
    np.testing.assert_array_equal(held["Plp1"].to_numpy(), truth)
    with pytest.raises(ValueError, match="not in the osmFISH panel"):
        scfound.datasets.osmfish_halves(["Mbp"])
