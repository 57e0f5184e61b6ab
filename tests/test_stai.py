import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import scfound as sf
from scfound.data._paired_loader import block_edges, spatial_blocks
from scfound.nn import knn_adjacency
from scfound.nn._alignment import (
    MMD_MULTIPLIERS,
    column_pearson,
    cross_correlation,
    knn_softmax,
    mmd_rbf,
)

FAST = {"n_folds": 3, "mmd_cells": 128}


@pytest.fixture
def pair():
    """Spatial half (first 20 of 30 genes, coordinates) and reference half (all genes, labels)."""
    data = sf.datasets.synthetic_spatial(600, 30, 4, seed=0, n_fovs=2)
    data.obs["fov"] = data.obs["fov"].astype(str)
    rng = np.random.default_rng(0)
    is_ref = rng.random(data.n_obs) < 0.5
    spatial = data[~is_ref, :20].copy()
    reference = data[is_ref].copy()
    del reference.obsm["spatial"]
    truth = data[~is_ref, 20:].layers["counts"]
    return spatial, reference, np.asarray(truth)


def _pcc(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_mmd_matches_direct_formula():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 3, generator=gen), torch.randn(30, 3, generator=gen) + 1.0
    u = torch.cat([x, y])
    d2 = torch.cdist(u, u) ** 2
    s = d2.sum() / (70 * 69)
    k = sum(torch.exp(-d2 / (s * m)) for m in MMD_MULTIPLIERS)
    expected = k[:40, :40].mean() - 2 * k[:40, 40:].mean() + k[40:, 40:].mean()
    assert torch.allclose(mmd_rbf(x, y), expected, atol=1e-5)
    assert mmd_rbf(x, x + 0.0) < 1e-5 < mmd_rbf(x, y)


def test_pearson_gradient_is_finite_at_a_constant_column():
    """A constant prediction (e.g. all neighbours without counts) must not poison training."""
    a = torch.ones(6, 2).requires_grad_()
    b = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    (column_pearson(a, b).sum() + cross_correlation(b, a).sum()).backward()
    assert torch.isfinite(a.grad).all()
    x, y = torch.randn(50, 3, generator=torch.Generator().manual_seed(1)), torch.randn(50, 3)
    expected = [np.corrcoef(x[:, j], y[:, j])[0, 1] for j in range(3)]
    np.testing.assert_allclose(column_pearson(x, y).numpy(), expected, rtol=1e-4)


def test_knn_softmax_weights_nearest_rows():
    gen = torch.Generator().manual_seed(0)
    q, r = torch.randn(5, 4, generator=gen), torch.randn(50, 4, generator=gen)
    w, idx = knn_softmax(q, r, 7)
    d = torch.cdist(q, r)
    assert torch.equal(
        torch.sort(idx, 1).values, torch.sort(d.topk(7, largest=False).indices, 1).values
    )
    assert torch.allclose(w.sum(1), torch.ones(5))
    expected = torch.softmax(-d.gather(1, idx), 1)
    assert torch.allclose(w, expected, atol=1e-5)
    w_all, idx_all = knn_softmax(q, r, None)
    assert idx_all.shape == (5, 50) and torch.allclose(w_all, torch.softmax(-d, 1), atol=1e-5)


def test_blocks_partition_and_graph_stays_within_samples():
    rng = np.random.default_rng(0)
    coords = rng.random((500, 2))
    samples = np.repeat([0, 1], 250)  # two slices with overlapping coordinates
    blocks = spatial_blocks(coords, samples, 100)
    cells = np.concatenate(blocks)
    assert sorted(cells.tolist()) == list(range(500))
    assert max(len(b) for b in blocks) <= 100
    assert all(len(np.unique(samples[b])) == 1 for b in blocks)
    adj = knn_adjacency(coords, 5, samples)
    rows, cols = adj.nonzero()
    assert (samples[rows] == samples[cols]).all() and (rows != cols).all()
    assert (adj != adj.T).nnz == 0 and (np.asarray(adj.sum(1)).ravel() >= 5).all()
    edges = block_edges(adj, blocks[0])
    assert edges.max() < len(blocks[0]) and edges.shape[1] >= len(blocks[0])


def test_stai_imputes_unmeasured_genes_and_annotates(pair):
    spatial, reference, truth = pair
    sf.STAI.setup_anndata(spatial, layer="counts", spatial_key="spatial", group_key="fov")
    sf.STAI.setup_anndata(reference, layer="counts", labels_key="cell_type")
    model = sf.STAI(spatial, reference, **FAST)
    model.train(max_epochs=60, batch_size=256)
    assert model.n_folds == 3 and len(model.shared_genes) == 20
    imputed = model.get_imputed_expression(scale="log1p")
    assert imputed.dtypes.eq(np.float32).all()
    assert list(imputed.columns) == list(reference.var_names[20:])
    assert imputed.index.equals(spatial.obs_names)
    pccs = [_pcc(imputed.iloc[:, j].to_numpy(), truth[:, j]) for j in range(10)]
    assert np.median(pccs) > 0.3  # knowing the true cell type gives 0.40
    # counts: the neighbours' normalised expression at the cell's depth over the shared genes
    # (two runs of the model: equal up to float rounding, which differs between runs on a GPU)
    default = model.get_imputed_expression()  # the default scale
    np.testing.assert_allclose(imputed, default, rtol=1e-5, atol=1e-6)
    counts = model.get_imputed_expression(scale="counts")
    np.testing.assert_allclose(
        counts, model.get_imputed_expression(spatial, scale="counts"), rtol=1e-5, atol=1e-6
    )
    ref_counts = np.asarray(reference.layers["counts"], dtype=np.float64)
    per_10k = ref_counts / ref_counts.sum(1, keepdims=True) * 1e4
    weights = sum(model._neighbour_weights(m).toarray() for m in range(3)) / 3
    depth = np.asarray(spatial.layers["counts"], dtype=np.float64).sum(1, keepdims=True)
    expected = weights @ per_10k[:, 20:] * depth / per_10k[:, :20].sum(1).mean()
    np.testing.assert_allclose(counts.to_numpy(), expected, rtol=1e-4)
    # on the synthetic counts, whose depth varies by cell, the counts scale follows the truth
    pccs_counts = [_pcc(counts.iloc[:, j].to_numpy(), truth[:, j]) for j in range(10)]
    assert np.median(pccs_counts) > np.median(pccs)
    assert counts.columns.equals(imputed.columns) and counts.index.equals(imputed.index)
    with pytest.raises(ValueError, match="scale must be"):
        model.get_imputed_expression(scale="raw")
    # temperature: picked on the calibration genes, then the default of the imputation
    assert model.imputation_temperature_ == 1.0
    table = model.calibrate_imputation((0.25, 1.0))
    assert list(table.index) == [0.25, 1.0] and np.isfinite(table).all()
    assert model.imputation_temperature_ == table.idxmax()
    sharp = model.get_imputed_expression(scale="log1p", temperature=0.25)
    np.testing.assert_allclose(
        model.get_imputed_expression(),
        model.get_imputed_expression(temperature=table.idxmax()),
        rtol=1e-5,
        atol=1e-6,
    )
    assert not np.allclose(sharp.to_numpy(), imputed.to_numpy())
    for bad in ((), (0.0, 1.0)):
        with pytest.raises(ValueError, match="temperatures must be positive"):
            model.calibrate_imputation(bad)
    with pytest.raises(ValueError, match="temperature must be positive"):
        model.get_imputed_expression(temperature=-1.0)
    pred = model.predict()
    accuracy = pred.astype(str).to_numpy() == spatial.obs["cell_type"].astype(str).to_numpy()
    assert accuracy.mean() > 0.8
    probs = model.predict(soft=True)
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    z_sp = model.get_latent_representation("spatial", fold=1)
    z_ref = model.get_latent_representation("reference", fold=1)
    assert z_sp.shape == (spatial.n_obs, 16) and z_ref.shape == (reference.n_obs, 16)
    # a diverged submodel is an error, not NaN imputations
    with torch.no_grad():
        next(model.module.submodels[1].parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="submodel 1 gives non-finite latents"):
        model.get_imputed_expression()


def test_save_load_round_trip(pair, tmp_path):
    spatial, reference, _ = pair
    sf.STAI.setup_anndata(spatial, layer="counts", spatial_key="spatial")
    sf.STAI.setup_anndata(reference, layer="counts", labels_key="cell_type")
    model = sf.STAI(spatial, reference, **FAST)
    model.train(max_epochs=2, batch_size=256)
    model.save(tmp_path / "m")
    loaded = sf.STAI.load(tmp_path / "m", spatial.copy(), reference.copy())
    genes = ["gene_25"]
    assert np.allclose(
        loaded.get_imputed_expression(genes=genes), model.get_imputed_expression(genes=genes)
    )
    model.imputation_temperature_ = 0.5
    model.save(tmp_path / "t")
    reloaded = sf.STAI.load(tmp_path / "t", spatial.copy(), reference.copy())
    assert reloaded.imputation_temperature_ == 0.5
    assert (loaded.predict() == model.predict()).all()
    with pytest.raises(ValueError, match="already holds"):
        model.save(tmp_path / "m")
    with pytest.raises(ValueError, match="do not match"):
        sf.STAI.load(tmp_path / "m", spatial[:, :10].copy(), reference.copy())


def test_sample_key_is_a_deprecated_alias_and_old_saves_load(pair, tmp_path):
    import json

    spatial, reference, _ = pair
    with pytest.warns(FutureWarning, match="sample_key.*deprecated.*group_key"):
        sf.STAI.setup_anndata(spatial, layer="counts", spatial_key="spatial", sample_key="fov")
    with pytest.raises(ValueError, match="pass `group_key` only"):
        sf.STAI.setup_anndata(spatial, spatial_key="spatial", group_key="fov", sample_key="x")
    sf.STAI.setup_anndata(reference, layer="counts")
    model = sf.STAI(spatial, reference, **FAST)
    args = model.adata_manager.registry["setup_args"]
    assert args["group_key"] == "fov" and "sample_key" not in args
    codes = pd.factorize(spatial.obs["fov"])[0]
    rows, cols = model._adjacency.nonzero()
    assert len(np.unique(codes)) == 2 and (codes[rows] == codes[cols]).all()
    model.train(max_epochs=1, batch_size=256)
    model.save(tmp_path / "m")
    # a model saved before the rename recorded `sample_key`: it loads, without a warning
    meta_file = tmp_path / "m" / "model.json"
    meta = json.loads(meta_file.read_text())
    meta["spatial_setup"]["sample_key"] = meta["spatial_setup"].pop("group_key")
    meta_file.write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        loaded = sf.STAI.load(tmp_path / "m", spatial.copy(), reference.copy())
    assert loaded.adata_manager.registry["setup_args"]["group_key"] == "fov"
    np.testing.assert_array_equal(loaded._samples, model._samples)
    np.testing.assert_allclose(
        loaded.get_imputed_expression(genes=["gene_25"]),
        model.get_imputed_expression(genes=["gene_25"]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_reference_smoothing_averages_values_over_expression_neighbours(pair, tmp_path):
    spatial, reference, _ = pair
    sf.STAI.setup_anndata(spatial, layer="counts", spatial_key="spatial")
    sf.STAI.setup_anndata(reference, layer="counts")
    with pytest.raises(ValueError, match="reference_smoothing must be"):
        sf.STAI(spatial, reference, reference_smoothing=0, reference_transform="scale")
    with pytest.warns(UserWarning, match="transcriptome-wide"):  # 30 genes: a panel
        model = sf.STAI(spatial, reference, reference_smoothing=8, reference_transform="scale")
    model.train(max_epochs=2, batch_size=256)
    genes = ["gene_21", "gene_25"]
    smoothed = model.get_imputed_expression(genes=genes, scale="log1p").to_numpy()
    counts = np.asarray(reference.layers["counts"], dtype=np.float64)
    values = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)[
        :, reference.var_names.get_indexer(genes)
    ]
    S = sf.pp.knn_smoothing_matrix(counts, 8)
    expected = np.mean(
        [model._neighbour_weights(m) @ (S @ values) for m in range(model.n_folds)], axis=0
    )
    np.testing.assert_allclose(smoothed, expected, rtol=1e-4, atol=1e-5)
    model.reference_smoothing = None
    assert not np.allclose(
        model.get_imputed_expression(genes=genes, scale="log1p").to_numpy(), smoothed
    )
    model.reference_smoothing = 3  # a new k builds a new matrix
    assert not np.allclose(
        model.get_imputed_expression(genes=genes, scale="log1p").to_numpy(), smoothed
    )
    model.reference_smoothing = 8
    np.testing.assert_allclose(
        model.get_imputed_expression(genes=genes, scale="log1p").to_numpy(),
        smoothed,
        rtol=1e-5,
        atol=1e-6,
    )
    model.save(tmp_path / "m")
    with pytest.warns(UserWarning, match="transcriptome-wide"):
        loaded = sf.STAI.load(tmp_path / "m", spatial.copy(), reference.copy())
    assert loaded.reference_smoothing == 8
    np.testing.assert_allclose(
        loaded.get_imputed_expression(genes=genes, scale="log1p").to_numpy(),
        smoothed,
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("how", ["cp10k_log1p", "scale", "log1p"])
def test_reference_transform_sets_the_reference_z_scores(pair, how):
    spatial, reference, _ = pair
    sf.STAI.setup_anndata(spatial, layer="counts", spatial_key="spatial")
    sf.STAI.setup_anndata(reference, layer="counts")
    if how == "cp10k_log1p":  # 30 reference genes: a panel, normalised
        with pytest.warns(UserWarning, match=r"targeted panel \(30 genes"):
            model = sf.STAI(spatial, reference, reference_transform=how, **FAST)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            model = sf.STAI(spatial, reference, reference_transform=how, **FAST)
    counts = np.asarray(reference.layers["counts"], dtype=np.float64)
    library = counts.sum(1, keepdims=True)
    shared = counts[:, reference.var_names.get_indexer(model.shared_genes)]
    x = {
        "cp10k_log1p": np.log1p(shared / library * 1e4),
        "scale": shared,
        "log1p": np.log1p(shared),
    }[how]
    expected = np.clip((x - x.mean(0)) / x.std(0), -10, 10)
    z = model.module.scale_reference(
        torch.tensor(shared, dtype=torch.float32), torch.tensor(library, dtype=torch.float32)
    )
    np.testing.assert_allclose(z.numpy(), expected, atol=1e-3)


def test_clear_errors(pair):
    spatial, reference, _ = pair
    sf.STAI.setup_anndata(spatial, layer="counts", spatial_key="spatial")
    few = reference[:, 19:].copy()  # one shared gene
    sf.STAI.setup_anndata(few, layer="counts")
    with pytest.raises(ValueError, match="share 1 gene"):
        sf.STAI(spatial, few)
    logged = reference.copy()
    logged.layers["counts"] = np.log1p(logged.layers["counts"])
    sf.STAI.setup_anndata(logged, layer="counts")
    with pytest.raises(ValueError, match="raw counts"):
        sf.STAI(spatial, logged)
    empty = reference.copy()
    empty.layers["counts"] = np.zeros_like(empty.layers["counts"])
    sf.STAI.setup_anndata(empty, layer="counts")
    with pytest.raises(ValueError, match="no counts"):
        sf.STAI(spatial, empty)
    no_coords = spatial.copy()
    sf.STAI.setup_anndata(no_coords, layer="counts")
    sf.STAI.setup_anndata(reference, layer="counts")
    with pytest.raises(ValueError, match="without coordinates"):
        sf.STAI(no_coords, reference)
    sf.STAI.setup_anndata(spatial, layer="counts", spatial_key="spatial")  # copies share its id
    with pytest.raises(ValueError, match="reference_transform must be 'auto' or one of"):
        sf.STAI(spatial, reference, reference_transform="cp10k")
    model = sf.STAI(spatial, reference, **FAST)
    model.train(max_epochs=1, batch_size=256)
    with pytest.raises(ValueError, match="without labels"):
        model.predict()
    with pytest.raises(ValueError, match="not in the reference"):
        model.get_imputed_expression(genes=["nope"])
    # the first argument is the spatial data: genes passed there get a pointer to `genes=`
    with pytest.raises(ValueError, match="pass genes as `genes="):
        model.get_imputed_expression(["gene_21"])
    with pytest.raises(ValueError, match="not the spatial data the model was set up with"):
        model.get_imputed_expression(spatial[:10].copy())
    with pytest.raises(ValueError, match="not the spatial data the model was set up with"):
        model.get_imputed_expression(reference)


def test_tl_impute_and_annotate_touch_only_documented_keys(pair):
    spatial, reference, _ = pair
    before_sp, before_ref = spatial.copy(), reference.copy()
    sf.tl.impute(
        spatial,
        method="stai",
        reference=reference,
        layer="counts",
        reference_layer="counts",
        genes=["gene_21", "gene_22"],
        max_epochs=2,
        model_kwargs=FAST,
    )
    assert list(spatial.obsm["stai_imputed"].columns) == ["gene_21", "gene_22"]
    assert set(spatial.obsm) == {"spatial", "stai_imputed"}
    assert spatial.obs.equals(before_sp.obs) and spatial.var.equals(before_sp.var)
    assert np.array_equal(spatial.layers["counts"], before_sp.layers["counts"])
    assert spatial.uns["scfound"]["impute"]["stai_imputed"]["method"] == "stai"
    run = spatial.uns["scfound"]["impute"]["stai_imputed"]
    # defaults chosen from the data are recorded: stAI's log1p output, the panel reference read
    # as the spatial side, and the temperature calibrated on the measured genes
    assert run["scale"] == "log1p" and run["reference_transform"] == "scale"
    assert str(run["reference_smoothing"]) == "None" and "targeted panel" in run["reference"]
    calibration = run["calibration_pcc"]
    assert set(calibration) == {"0.25", "0.5", "1.0"}
    assert float(run["temperature"]) == float(max(calibration, key=calibration.get))
    with pytest.raises(ValueError, match="scale must be"):
        sf.tl.impute(spatial, method="stai", reference=reference, layer="counts", scale="raw")
    assert reference.obs.equals(before_ref.obs) and set(reference.uns) == set(before_ref.uns)
    view = sf.tl.imputed_anndata(spatial)
    assert view.shape == (spatial.n_obs, 2) and "spatial" in view.obsm
    annotate = {
        "reference": reference,
        "method": "stai",
        "layer": "counts",
        "reference_layer": "counts",
    }
    sf.tl.annotate(spatial, "cell_type", max_epochs=2, model_kwargs=FAST, **annotate)
    assert spatial.obs["stai_prediction"].notna().all()
    assert spatial.obsm["stai_probabilities"].shape == (spatial.n_obs, 4)
    # a new annotation model leaves the MMD term out (recorded); given weights replace that
    run = next(iter(spatial.uns["scfound"]["annotate"].values()))
    assert float(run["mmd_weight"]) == 0.0
    model = sf.tl.annotate(
        spatial,
        "cell_type",
        **annotate,
        max_epochs=1,
        model_kwargs=FAST | {"weights": {"mmd": 0.1}},
        key_added="with_mmd",
        return_model=True,
    )
    assert model.module.weights["mmd"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="not in the reference"):
        sf.tl.impute(spatial, method="stai", reference=reference, layer="counts", genes=["nope"])
    with pytest.raises(KeyError, match="labels column 'missing'"):
        sf.tl.annotate(spatial, "missing", reference=reference, method="stai")
    with pytest.raises(ValueError, match="reference"):
        sf.tl.annotate(spatial, "cell_type", method="stai")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("reference_transform", "scale", "min_pcc"),
    [("cp10k_log1p", "log1p", 0.45), ("scale", "counts", 0.55)],
)
def test_osmfish_half_as_reference_recovers_a_held_out_gene(reference_transform, scale, min_pcc):
    """Real data: half of osmFISH as a reference without coordinates, Sox10 held out.

    With stAI's defaults (and the warning that a 33-gene reference is library-normalised), and
    with the settings for a panel reference (measured 0.59 and 0.65 at 20 epochs).
    """
    osm = sf.datasets.osmfish()
    rng = np.random.default_rng(0)
    is_ref = rng.random(osm.n_obs) < 0.5
    reference = ad.AnnData(
        osm.layers["counts"][is_ref],
        obs=osm.obs[["cell_type"]][is_ref].copy(),
        var=pd.DataFrame(index=osm.var_names),
    )
    keep = [g for g in osm.var_names if g != "Sox10"]
    spatial = osm[~is_ref, keep].copy()
    kwargs = {
        "method": "stai",
        "reference": reference,
        "genes": ["Sox10"],
        "layer": "counts",
        "scale": scale,
        "max_epochs": 20,
        "model_kwargs": {"n_folds": 3, "reference_transform": reference_transform},
    }
    if reference_transform == "cp10k_log1p":
        with pytest.warns(UserWarning, match=r"targeted panel \(33 genes"):
            sf.tl.impute(spatial, **kwargs)
    else:
        sf.tl.impute(spatial, **kwargs)
    truth = osm[~is_ref].obs_vector("Sox10", layer="counts")
    assert _pcc(spatial.obsm["stai_imputed"]["Sox10"].to_numpy(), truth) > min_pcc


# ------------------------------------------------------------------ training output
#: what every training call printed before: scvi-tools' column-name log at setup, Lightning's
#: device banner, litlogger tip and end-of-fit line, torch's LeafSpec deprecation,
#: and Lightning's guess at the size of a two-dataset batch
NOISE = (
    "Generating sequential column names",
    "GPU available",
    "TPU available",
    "litlogger",
    "LeafSpec",
    "`Trainer.fit` stopped",
    "ambiguous collection",
)


def _run_quietly(capfd, caplog, fn):
    """Run ``fn``; return what it printed, logged or warned, after checking it has no NOISE."""
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    out, err = capfd.readouterr()
    text = "\n".join([out, err, caplog.text, *(str(w.message) for w in caught)])
    assert not [m for m in NOISE if m in text], text
    return text


def test_training_is_quiet_but_shows_progress(pair, capfd, caplog, monkeypatch):
    spatial, reference, _ = pair

    def run():
        sf.STAI.setup_anndata(spatial, layer="counts", spatial_key="spatial", group_key="fov")
        sf.STAI.setup_anndata(reference, layer="counts", labels_key="cell_type")
        model = sf.STAI(spatial, reference, **FAST)
        model.train(max_epochs=2, batch_size=128)
        assert model.trainer.progress_bar_callback is not None
        model.get_imputed_expression()

    assert "Epoch 2/2" in _run_quietly(capfd, caplog, run)
    monkeypatch.setattr(sf.settings, "progress_bar", False)
    with pytest.warns(UserWarning, match="reference is a targeted panel"):
        model = sf.STAI(spatial, reference, reference_transform="cp10k_log1p", **FAST)
    assert "Epoch" not in _run_quietly(capfd, caplog, lambda: model.train(max_epochs=1))
    assert model.trainer.progress_bar_callback is None


# ------------------------------------------------------------- defaults from the data
def test_reference_breadth_tells_panels_from_sparse_transcriptomes():
    from scfound.models.stai._model import reference_breadth

    dense = np.full(5, 100.0)
    assert reference_breadth(120, 119, dense) == (True, False)  # a 120-gene panel
    assert reference_breadth(960, 960, dense) == (True, False)  # the same wide panel
    assert reference_breadth(2000, 20, dense) == (False, False)  # transcriptome-wide, dense
    # transcriptome-wide, median cell with 2 counts in the shared genes: sparse
    assert reference_breadth(2000, 20, np.array([0.0, 1.0, 2.0, 50.0, 50.0])) == (False, True)


def _wide_sparse(reference: ad.AnnData, n_extra: int = 600) -> ad.AnnData:
    """``reference`` thinned to a few counts per cell, plus ``n_extra`` genes it alone measures."""
    rng = np.random.default_rng(1)
    counts = np.asarray(reference.layers["counts"], dtype=np.float64)
    thin = rng.binomial(counts.astype(np.int64), 0.02).astype(np.float32)
    extra = rng.poisson(1.0, (reference.n_obs, n_extra)).astype(np.float32)
    X = np.hstack([thin, extra])
    names = [*reference.var_names, *(f"extra_{i}" for i in range(n_extra))]
    out = ad.AnnData(X, obs=reference.obs.copy(), var=pd.DataFrame(index=names))
    out.layers["counts"] = X.copy()
    return out


def test_auto_reference_options_follow_the_reference_breadth(pair, caplog):
    spatial, reference, _ = pair
    sf.STAI.setup_anndata(spatial, layer="counts", spatial_key="spatial", group_key="fov")
    sf.STAI.setup_anndata(reference, layer="counts")
    logger = "scfound.models.stai._model"
    with caplog.at_level("INFO", logger=logger), warnings.catch_warnings():
        warnings.simplefilter("error")  # a chosen option gets no warning
        panel = sf.STAI(spatial, reference, **FAST)
    assert panel.module.reference_transform == "scale" and panel.reference_smoothing is None
    assert panel.chosen_defaults_["reference_transform"] == "scale"
    assert panel.init_params_["kwargs"]["reference_transform"] == "scale"  # saved resolved
    assert caplog.text.count("targeted panel") == 1  # logged once
    wide = _wide_sparse(reference)
    sf.STAI.setup_anndata(wide, layer="counts")
    model = sf.STAI(spatial, wide, **FAST)
    assert model.module.reference_transform == "cp10k_log1p"
    assert model.reference_smoothing == 15
    assert "sparse" in model.chosen_defaults_["reference"]
    # options given by the user are kept and nothing is recorded as chosen
    given = sf.STAI(spatial, wide, reference_transform="log1p", reference_smoothing=None, **FAST)
    assert given.module.reference_transform == "log1p" and given.reference_smoothing is None
    assert given.chosen_defaults_ == {}
    with pytest.raises(ValueError, match="reference_smoothing must be 'auto', None or a positive"):
        sf.STAI(spatial, wide, reference_smoothing="on", **FAST)


def test_calibration_on_the_log_scale_scores_log_normalised_values(pair):
    """At ``scale='log1p'`` the calibration genes are scored against log1p of CP10k."""
    spatial, reference, _ = pair
    sf.STAI.setup_anndata(spatial, layer="counts", spatial_key="spatial", group_key="fov")
    sf.STAI.setup_anndata(reference, layer="counts")
    model = sf.STAI(spatial, reference, **FAST)
    model.train(max_epochs=2, batch_size=256)
    table = model.calibrate_imputation((0.5, 1.0), scale="log1p")
    counts = np.asarray(spatial.layers["counts"], dtype=np.float64)
    per_10k = np.asarray(reference.layers["counts"], dtype=np.float64)
    per_10k = np.log1p(per_10k / per_10k.sum(1, keepdims=True) * 1e4)[:, :20]
    scores = []
    for m in range(model.n_folds):
        train, calib = (g.cpu().numpy() for g in model.module.genes(m))
        depth = counts[:, train].sum(1, keepdims=True)
        target = np.log1p(counts[:, calib] / np.maximum(depth, 1.0) * 1e4)
        pred = model._neighbour_weights(m, 0.5).toarray() @ per_10k[:, calib]
        scores += [_pcc(pred[:, j], target[:, j]) for j in range(len(calib))]
    assert table[0.5] == pytest.approx(np.mean(scores), abs=1e-4)
