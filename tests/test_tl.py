import numpy as np
import pytest

import scfound as sf

FAST = {"model_kwargs": {"n_hidden": 16, "n_heads": 2, "n_latent": 4}, "max_epochs": 2}


def _snapshot(adata):
    return {
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "obsm": set(adata.obsm.keys()),
        "layers": set(adata.layers.keys()),
        "X": adata.X.copy(),
        "uns": set(adata.uns.keys()),
    }


def test_impute_writes_only_documented_keys(synthetic):
    before = _snapshot(synthetic)
    sf.tl.impute(synthetic, layer="counts", **FAST)
    after = _snapshot(synthetic)
    assert after["layers"] == before["layers"] | {"spaformer_imputed"}
    assert after["obsm"] == before["obsm"]
    assert after["uns"] == before["uns"] | {"scfound"}
    assert after["obs"].equals(before["obs"])
    assert after["var"].equals(before["var"])
    assert (
        (after["X"] != before["X"]).nnz == 0
        if hasattr(after["X"], "nnz")
        else np.array_equal(after["X"], before["X"])
    )
    imputed = synthetic.layers["spaformer_imputed"]
    assert imputed.shape == synthetic.shape and imputed.dtype == np.float32
    rec = synthetic.uns["scfound"]["impute"]
    assert rec["method"] == "spaformer" and rec["layer"] == "counts" and rec["epochs"] == 2


def test_impute_copy_and_group_key(synthetic):
    out = sf.tl.impute(synthetic, layer="counts", group_key="fov", copy=True, **FAST)
    assert "spaformer_imputed" in out.layers
    assert "spaformer_imputed" not in synthetic.layers
    assert "scfound" not in synthetic.uns


def test_impute_and_embed_with_a_trained_model(synthetic):
    sf.SpaFormer.setup_anndata(synthetic, layer="counts", group_key="fov")
    model = sf.SpaFormer(synthetic, n_hidden=16, n_heads=2, n_latent=4)
    model.train(max_epochs=1)
    other = synthetic.copy()
    for key in list(other.obs.columns):
        if key.startswith("_scvi"):
            del other.obs[key]
    sf.tl.impute(other, model=model, key_added="imp")
    np.testing.assert_allclose(other.layers["imp"], model.get_imputed_expression(), rtol=1e-5)
    sf.tl.embed(other, model=model)
    assert other.obsm["X_spaformer"].shape == (other.n_obs, 4)
    assert other.uns["scfound"]["embed"]["key_added"] == "X_spaformer"


def test_embed_trains_by_default(synthetic):
    sf.tl.embed(synthetic, layer="counts", key_added="X_sf", **FAST)
    assert synthetic.obsm["X_sf"].shape == (synthetic.n_obs, 4)


def test_tool_errors(synthetic):
    del synthetic.obsm["spatial"]
    with pytest.raises(ValueError, match="spatial"):
        sf.tl.impute(synthetic)
    with pytest.raises(ValueError, match="method"):
        sf.tl.impute(synthetic, method="magic")
