import inspect
import logging
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import scfound as sf
from scfound.nn import POSITIONAL_ENCODINGS

SMALL = {"n_hidden": 16, "n_heads": 2, "n_latent": 4}


def _setup(adata, **kw):
    sf.SpaFormer.setup_anndata(adata, layer="counts", group_key="fov", **kw)
    return adata


@pytest.mark.parametrize(
    "options",
    [{"pos_encoding": pe} for pe in sorted(POSITIONAL_ENCODINGS)]
    + [
        {"likelihood": "zinb"},
        {"variational": True},
        {"likelihood": "zinb", "variational": True},
        {"encoder": "gat", "pos_encoding": "none"},
        {"drop_node_rate": 0.3, "loss_on": "masked_cells"},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_train_save_load_round_trip(synthetic, tmp_path, options):
    adata = _setup(synthetic)
    model = sf.SpaFormer(adata, **SMALL, **options)
    model.train(max_epochs=1, train_size=0.5)
    assert "train_loss" in model.history and "validation_loss" in model.history
    z = model.get_latent_representation()
    frame = model.get_imputed_expression()
    assert isinstance(frame, pd.DataFrame) and (frame.dtypes == np.float32).all()
    assert frame.index.equals(adata.obs_names) and frame.columns.equals(adata.var_names)
    imputed = frame.to_numpy()
    assert z.shape == (adata.n_obs, 4)
    assert imputed.shape == adata.shape
    assert np.isfinite(imputed).all() and (imputed >= 0).all()
    model.save(tmp_path / "m")
    state = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    assert isinstance(state, dict)
    loaded = sf.SpaFormer.load(tmp_path / "m", adata)
    np.testing.assert_allclose(loaded.get_latent_representation(), z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loaded.get_imputed_expression(), imputed, rtol=1e-5, atol=1e-5)
    assert loaded.module.target_sum == model.module.target_sum
    assert len(loaded.history["train_loss"]) == 1


def test_results_follow_the_original_cell_order(synthetic):
    adata = _setup(synthetic)
    model = sf.SpaFormer(adata, **SMALL, pos_encoding="none", max_cells=50)
    model.train(max_epochs=1)
    imputed = model.get_imputed_expression()
    assert np.array_equal(imputed, model.get_imputed_expression())  # deterministic
    # a cell's output depends on its group's cells, not on where it sits in adata
    perm = np.random.default_rng(0).permutation(adata.n_obs)
    shuffled = adata[perm].copy()
    model2 = sf.SpaFormer(_setup(shuffled), **SMALL, pos_encoding="none", max_cells=None)
    model2.module.load_state_dict(model.module.state_dict())
    model2.is_trained_ = True
    model.max_cells = None
    np.testing.assert_allclose(
        model2.get_imputed_expression().to_numpy()[np.argsort(perm)],
        model.get_imputed_expression(),
        rtol=1e-4,
        atol=1e-5,
    )


def test_keep_observed_and_log_scale(synthetic):
    adata = _setup(synthetic)
    model = sf.SpaFormer(adata, **SMALL)
    model.train(max_epochs=1)
    counts = adata.layers["counts"]
    counts = counts.toarray() if hasattr(counts, "toarray") else counts
    kept = model.get_imputed_expression(keep_observed=True).to_numpy()
    assert np.array_equal(kept[counts > 0], counts[counts > 0])
    logged = model.get_imputed_expression(scale="log1p").to_numpy()
    lib = np.expm1(logged).sum(1)
    np.testing.assert_allclose(lib, model.module.target_sum, rtol=1e-3)
    with pytest.raises(ValueError, match="scale"):
        model.get_imputed_expression(scale="raw")
    # a subset of the genes: the same values (log1p normalises over all genes first)
    genes = ["gene_3", "gene_0"]
    subset = model.get_imputed_expression(genes=genes, scale="log1p")
    assert list(subset.columns) == genes and subset.index.equals(adata.obs_names)
    np.testing.assert_allclose(
        subset, logged[:, adata.var_names.get_indexer(genes)], rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match=r"1 requested gene\(s\) are not in adata.var_names"):
        model.get_imputed_expression(genes=["gene_0", "nope"])


def test_training_lowers_heldout_error(synthetic):
    adata = synthetic
    sf.pp.mask_entries(adata, fraction=0.3, layer="counts", seed=0)
    sf.SpaFormer.setup_anndata(adata, layer="heldout_counts", group_key="fov")
    model = sf.SpaFormer(adata, n_hidden=32, n_heads=4)
    mask = np.asarray(adata.layers["heldout"], dtype=bool)
    model.is_trained_ = True
    before = sf.metrics.imputation_scores(
        adata.layers["counts"], model.get_imputed_expression(), mask
    )
    model.train(max_epochs=40)
    after = sf.metrics.imputation_scores(
        adata.layers["counts"], model.get_imputed_expression(), mask
    )
    assert after["rmse"] < 0.8 * before["rmse"]
    assert after["pearson"] > before["pearson"] + 0.1


def test_setup_errors_name_the_key(synthetic):
    a = synthetic.copy()
    with pytest.raises(KeyError, match="coords"):
        sf.SpaFormer.setup_anndata(a, layer="counts", spatial_key="coords")
    a.obsm["flat"] = np.zeros((a.n_obs, 4))
    with pytest.raises(ValueError, match="flat"):
        sf.SpaFormer.setup_anndata(a, layer="counts", spatial_key="flat")
    a.obsm["nan"] = np.array(a.obsm["spatial"], dtype=float)
    a.obsm["nan"][0, 0] = np.nan
    with pytest.raises(ValueError, match="nan"):
        sf.SpaFormer.setup_anndata(a, layer="counts", spatial_key="nan")
    bad = np.asarray(
        a.layers["counts"].todense()
        if hasattr(a.layers["counts"], "todense")
        else a.layers["counts"],
        dtype=np.float32,
    )
    bad[0, 0] = -1
    a.layers["neg"] = bad
    with pytest.raises(ValueError, match="negative"):
        sf.SpaFormer.setup_anndata(a, layer="neg")
    bad = bad.copy()
    bad[0, 0] = np.inf
    a.layers["inf"] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        sf.SpaFormer.setup_anndata(a, layer="inf")
    with pytest.raises(KeyError, match="missing_layer"):
        sf.SpaFormer.setup_anndata(a, layer="missing_layer")


def test_group_errors(synthetic):
    a = synthetic.copy()
    a.obs["fov"] = a.obs["fov"].cat.add_categories(["empty"])
    with pytest.raises(ValueError, match="empty groups"):
        sf.SpaFormer.setup_anndata(a, layer="counts", group_key="fov")
    a = synthetic.copy()
    a.obs["fov"] = a.obs["fov"].cat.add_categories(["lonely"])
    a.obs.iloc[0, a.obs.columns.get_loc("fov")] = "lonely"
    with pytest.raises(ValueError, match="single cell"):
        sf.SpaFormer.setup_anndata(a, layer="counts", group_key="fov")
    with pytest.raises(KeyError, match="tile"):
        sf.SpaFormer.setup_anndata(a, layer="counts", group_key="tile")


def test_model_argument_errors(synthetic):
    adata = _setup(synthetic)
    with pytest.raises(ValueError, match="pos_encoding"):
        sf.SpaFormer(adata, pos_encoding="relative")
    with pytest.raises(ValueError, match="gene_mask_rate"):
        sf.SpaFormer(adata, gene_mask_rate=1.0)
    with pytest.raises(ValueError, match="early_stopping"):
        sf.SpaFormer(adata, **SMALL).train(max_epochs=1, early_stopping=True)
    a = synthetic.copy()
    a.layers["norm"] = a.layers["counts"] * 0.5
    sf.SpaFormer.setup_anndata(a, layer="norm", group_key="fov")
    with pytest.raises(ValueError, match="non-integer"):
        sf.SpaFormer(a, likelihood="zinb")


def test_load_rejects_other_genes(synthetic, tmp_path):
    adata = _setup(synthetic)
    model = sf.SpaFormer(adata, **SMALL)
    model.train(max_epochs=1)
    model.save(tmp_path / "m")
    with pytest.raises(ValueError, match="1 model genes missing"):
        sf.SpaFormer.load(tmp_path / "m", synthetic[:, 1:].copy())
    with pytest.raises(ValueError, match="another order"):
        sf.SpaFormer.load(tmp_path / "m", synthetic[:, ::-1].copy())
    with pytest.raises(ValueError, match="already holds a model"):
        model.save(tmp_path / "m")


# ------------------------------------------------------------------ training output
#: what every training call printed before: scvi-tools' column-name log at setup, Lightning's
#: device banner, litlogger tip and end-of-fit line, torch's LeafSpec deprecation
NOISE = (
    "Generating sequential column names",
    "GPU available",
    "TPU available",
    "litlogger",
    "LeafSpec",
    "`Trainer.fit` stopped",
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


def test_group_models_share_the_mixin_and_keep_their_defaults():
    from scfound.models.base import GroupModelMixin

    for cls, defaults in [
        (sf.SpaFormer, {"max_epochs": 200, "lr": 1e-3, "weight_decay": 5e-4}),
        (sf.CellPLM, {"max_epochs": 100, "lr": 2e-4, "weight_decay": 1e-8}),
    ]:
        assert issubclass(cls, GroupModelMixin)
        params = inspect.signature(cls.train).parameters
        assert {k: params[k].default for k in defaults} == defaults
    shared = inspect.signature(GroupModelMixin.train).parameters
    assert shared["enable_progress_bar"].default is None and shared["strategy"].default == "auto"


def test_training_shows_progress_by_default_and_settings_silence_it(
    synthetic, capfd, caplog, monkeypatch
):
    assert sf.settings.progress_bar is True
    model = sf.SpaFormer(_setup(synthetic), **SMALL)
    text = _run_quietly(capfd, caplog, lambda: model.train(max_epochs=2))
    assert model.trainer.progress_bar_callback is not None
    assert "Epoch 2/2" in text and "train_loss" in text
    monkeypatch.setattr(sf.settings, "progress_bar", False)
    text = _run_quietly(capfd, caplog, lambda: model.train(max_epochs=1))
    assert model.trainer.progress_bar_callback is None and "Epoch" not in text
    model.train(max_epochs=1, enable_progress_bar=True)  # the argument overrides the setting
    assert model.trainer.progress_bar_callback is not None
    assert "Epoch 1/1" in capfd.readouterr().out
    with pytest.raises(TypeError, match="progress_bar"):
        sf.settings.progress_bar = "no"


def test_setup_and_training_print_no_noise(synthetic, capfd, caplog):
    def run():
        model = sf.SpaFormer(_setup(synthetic), **SMALL)
        model.train(max_epochs=1, train_size=0.5, early_stopping=True)
        model.get_imputed_expression()

    _run_quietly(capfd, caplog, run)
    # the filters are gone after training: the same kind of message is shown again
    logging.getLogger("lightning.pytorch.utilities.rank_zero").info("GPU available: control")
    assert "GPU available: control" in caplog.text
