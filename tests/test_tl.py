"""The ``tl`` verbs: registry, fixed output places, run records, input checks, model reuse."""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from mudata import MuData

import scfound as sf
from scfound.tl._methods import ADAPTERS, VERBS

SPAFORMER = {"n_hidden": 16, "n_heads": 2, "n_latent": 4}
CELLPLM = {"n_hidden": 16, "n_heads": 2, "n_layers": 2, "n_latent": 8, "n_decoder_hidden": 16}
STAI = {"n_folds": 2, "mmd_cells": 64}
SCMOGNN = {"n_hidden": 8, "n_layers": 2}
SAILER = {"n_hidden": (16, 8), "n_latent": 4}
SAILERX = {"n_hidden": (8, 4), "n_latent": 4, "n_rna_pcs": 4}
SCMOFORMER = {
    "n_hidden": 8,
    "n_heads": 2,
    "n_layers": 1,
    "n_cell_features": 4,
    "protein_symbols": {"gene_20": "gene_0"},
}
EXPRFORMER = {"n_hidden": 16, "n_layers": 1}
TINY = {
    "spaformer": SPAFORMER,
    "cellplm": CELLPLM,
    "stai": STAI,
    "scmognn": SCMOGNN,
    "sailer": SAILER,
    "sailerx": SAILERX,
    "exprformer": EXPRFORMER,
    "scmoformer": SCMOFORMER,
}
FAST = {"model_kwargs": SPAFORMER, "max_epochs": 2}

#: what each method supports; a change of the registry must change this table too
SUPPORT = {
    "spaformer": {"impute", "embed"},
    "cellplm": {"impute", "embed", "denoise", "annotate"},
    "stai": {"impute", "annotate"},
    "scmognn": {"predict_modality", "embed", "match_modalities"},
    "sailer": {"embed", "denoise"},
    "sailerx": {"embed"},
    "exprformer": {"embed", "denoise", "embed_genes"},
    "scmoformer": {"predict_modality"},
}


def _documented(verb, method):
    """The keys a verb writes with its default ``key_added``: (obs, obsm, layers)."""
    if verb == "impute":
        where = "layers" if method == "spaformer" else "obsm"
        return {where: {f"{method}_imputed"}}
    if verb == "embed":
        return {"obsm": {f"X_{method}"}}
    if verb == "embed_genes":
        return {"varm": {f"X_{method}"}}
    if verb == "denoise":
        return {"layers": {f"{method}_denoised"}}
    if verb == "predict_modality":
        return {"obsm": {f"{method}_adt"}}
    if verb == "match_modalities":
        return {"obs": {f"{method}_match"}, "obsm": {f"{method}_matching"}}
    return {
        "obs": {f"{method}_prediction", f"{method}_confidence"},
        "obsm": {f"{method}_probabilities"},
    }


@pytest.fixture(scope="module")
def halves():
    """A spatial query (20 of 30 genes, coordinates, FOVs) and a labelled reference (30 genes)."""
    data = sf.datasets.synthetic_spatial(300, 30, 3, seed=0, n_fovs=2)
    data.obs["fov"] = data.obs["fov"].astype(str)
    is_ref = np.random.default_rng(0).random(data.n_obs) < 0.5
    query = data[~is_ref, :20].copy()
    del query.obs["cell_type"]
    reference = data[is_ref].copy()
    del reference.obsm["spatial"]
    return query, reference


def _snapshot(adata):
    return {
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "obsm": {k: np.asarray(v).copy() for k, v in adata.obsm.items()},
        "layers": {k: np.asarray(v).copy() for k, v in adata.layers.items()},
        "varm": set(adata.varm),
        "X": np.asarray(adata.X).copy(),
        "uns": set(adata.uns),
    }


def _call(verb, method, query, reference):
    kwargs = {
        "layer": "counts",
        "max_epochs": 1,
        "model_kwargs": TINY[method],
        "group_key": "fov",
    }
    if verb in ("impute", "annotate") and method != "spaformer":
        kwargs.update(reference=reference, reference_layer="counts")
    if verb == "annotate":
        return sf.tl.annotate(query, "cell_type", method, **kwargs)
    if verb == "predict_modality":  # the query's 20 genes as RNA, the other 10 as proteins
        paired = MuData({"rna": reference[:, :20].copy(), "adt": reference[:, 20:].copy()})
        del kwargs["group_key"]
        kwargs["reference_layer"] = "counts"
        return sf.tl.predict_modality(query, paired, method, **kwargs)
    if verb == "match_modalities":  # the query's RNA against the reference's proteins
        paired = MuData({"rna": reference[:, :20].copy(), "adt": reference[:, 20:].copy()})
        del kwargs["group_key"]
        kwargs.update(reference_layer="counts", other_layer="counts")
        return sf.tl.match_modalities(query, paired.mod["adt"], paired, method, **kwargs)
    return getattr(sf.tl, verb)(query, method, **kwargs)


def test_registry_matches_the_support_table():
    assert {name: set(a.verbs()) for name, a in ADAPTERS.items()} == SUPPORT


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("method", sorted(ADAPTERS))
def test_every_verb_and_method_writes_exactly_its_keys(verb, method, halves):
    query, reference = (x.copy() for x in halves)
    before, ref_before = _snapshot(query), _snapshot(reference)
    if (verb, method) == ("embed", "scmognn"):  # a joint embedding: of a MuData, into its obsm
        mdata = MuData({"rna": query[:, :10].copy(), "adt": query[:, 10:].copy()})
        kwargs = {"layer": "counts", "max_epochs": 1, "model_kwargs": SCMOGNN}
        had = set(mdata.obsm)
        assert sf.tl.embed(mdata, method, **kwargs) is None
        assert set(mdata.obsm) - had == {"X_scmognn"}
        assert mdata.obsm["X_scmognn"].shape == (mdata.n_obs, SCMOGNN["n_hidden"])
        assert set(mdata.uns["scfound"]["embed"]) == {"X_scmognn"}
        assert all(
            set(m.obsm) == {"spatial"} and "scfound" not in m.uns for m in mdata.mod.values()
        )
        return
    if (verb, method) == ("embed", "sailerx"):  # paired RNA + ATAC: of a MuData, into its obsm
        mdata = MuData({"atac": query[:, :10].copy(), "rna": query[:, 10:].copy()})
        kwargs = {"layer": "counts", "max_epochs": 1, "model_kwargs": SAILERX, "chrom_key": None}
        had = set(mdata.obsm)
        assert sf.tl.embed(mdata, method, **kwargs) is None
        assert set(mdata.obsm) - had == {"X_sailerx"}
        assert mdata.obsm["X_sailerx"].shape == (mdata.n_obs, SAILERX["n_latent"])
        assert all("scfound" not in m.uns and "X_sailerx" not in m.obsm for m in mdata.mod.values())
        return
    if verb not in SUPPORT[method]:
        with pytest.raises(ValueError, match=f"method '{method}' does not support tl.{verb}"):
            _call(verb, method, query, reference)
        after = _snapshot(query)
        assert set(after["obsm"]) == set(before["obsm"]) and after["uns"] == before["uns"]
        return
    assert _call(verb, method, query, reference) is None
    after, documented = _snapshot(query), _documented(verb, method)
    new_obs = set(after["obs"].columns) - set(before["obs"].columns)
    assert new_obs == documented.get("obs", set())
    assert set(after["obsm"]) - set(before["obsm"]) == documented.get("obsm", set())
    assert set(after["layers"]) - set(before["layers"]) == documented.get("layers", set())
    assert after["varm"] - before["varm"] == documented.get("varm", set())
    assert after["uns"] == before["uns"] | {"scfound"}
    # nothing the user had is changed
    pd.testing.assert_frame_equal(after["obs"][before["obs"].columns], before["obs"])
    pd.testing.assert_frame_equal(after["var"], before["var"])
    np.testing.assert_array_equal(after["X"], before["X"])
    for kind in ("obsm", "layers"):
        for key, value in before[kind].items():
            np.testing.assert_array_equal(after[kind][key], value)
    after_ref = _snapshot(reference)
    pd.testing.assert_frame_equal(after_ref["obs"], ref_before["obs"])
    assert after_ref["uns"] == ref_before["uns"]
    # the run is recorded under its key, with the method
    key = (
        method
        if verb in ("annotate", "match_modalities")
        else next(iter(set().union(*documented.values())))
    )
    if verb == "annotate":
        probs = query.obsm[f"{method}_probabilities"]
        np.testing.assert_allclose(query.obs[f"{method}_confidence"], probs.max(axis=1), rtol=1e-6)
    assert query.uns["scfound"][verb][key]["method"] == method


def test_embed_with_stai_is_refused_before_any_training(halves):
    query, _ = halves
    with pytest.raises(
        ValueError, match=r"does not support tl.embed; methods that do: \['spaformer', 'cellplm'"
    ):
        sf.tl.embed(query, method="stai")
    with pytest.raises(ValueError, match=r"not a method of tl\.impute"):
        sf.tl.impute(query, method="magic")


def test_unknown_options_are_errors_that_name_them(synthetic):
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['fine_tune'\].*keep_observed"):
        sf.tl.impute(synthetic, layer="counts", fine_tune=True, **FAST)
    with pytest.raises(ValueError, match="does not read a `reference`"):
        sf.tl.impute(synthetic, "spaformer", reference=synthetic, layer="counts", **FAST)
    assert "scfound" not in synthetic.uns


def test_runs_accumulate_under_their_keys(synthetic):
    sf.tl.impute(synthetic, layer="counts", key_added="first", **FAST)
    sf.tl.impute(synthetic, layer="counts", key_added="second", keep_observed=True, **FAST)
    runs = synthetic.uns["scfound"]["impute"]
    assert set(runs) == {"first", "second"}
    assert runs["first"]["keep_observed"] is False and runs["second"]["keep_observed"] is True
    assert runs["first"]["epochs"] == 2 and runs["first"]["layer"] == "counts"
    # keep_observed keeps every non-zero count
    counts = synthetic.layers["counts"]
    counts = counts.toarray() if hasattr(counts, "toarray") else counts
    nz = counts > 0
    np.testing.assert_allclose(synthetic.layers["second"][nz], counts[nz], rtol=1e-5)


def test_a_fitted_model_is_returned_and_reused(synthetic):
    model = sf.tl.impute(synthetic, layer="counts", return_model=True, **FAST)
    assert isinstance(model, sf.SpaFormer)
    n_epochs = len(model.history_["train_loss"])
    sf.tl.embed(synthetic, model=model)
    assert len(model.history_["train_loss"]) == n_epochs  # not trained again
    np.testing.assert_allclose(
        synthetic.obsm["X_spaformer"], model.get_latent_representation(), rtol=1e-5, atol=1e-6
    )
    copied, same = sf.tl.embed(synthetic, model=model, copy=True, return_model=True)
    assert same is model and "X_spaformer" in copied.obsm


def test_impute_and_embed_with_a_user_trained_model(synthetic):
    sf.SpaFormer.setup_anndata(synthetic, layer="counts", group_key="fov")
    model = sf.SpaFormer(synthetic, **SPAFORMER)
    model.train(max_epochs=1)
    other = synthetic.copy()
    for key in list(other.obs.columns):
        if key.startswith("_scvi"):
            del other.obs[key]
    sf.tl.impute(other, model=model, key_added="imp")
    expected = model.get_imputed_expression()
    np.testing.assert_allclose(other.layers["imp"], np.asarray(expected), rtol=1e-5)
    assert other.uns["scfound"]["impute"]["imp"]["method"] == "spaformer"


def test_copy_leaves_the_input_alone(synthetic):
    out = sf.tl.impute(synthetic, layer="counts", group_key="fov", copy=True, **FAST)
    assert "spaformer_imputed" in out.layers
    assert "spaformer_imputed" not in synthetic.layers and "scfound" not in synthetic.uns


def test_wrong_inputs_get_clear_errors(synthetic):
    with pytest.raises(TypeError, match=r"expected an AnnData \(or MuData\).*got DataFrame"):
        sf.tl.impute(synthetic.to_df(), layer="counts")
    with pytest.raises(TypeError, match="got ndarray"):
        sf.tl.embed(np.ones((5, 3)))
    no_xy = synthetic.copy()
    del no_xy.obsm["spatial"]
    with pytest.raises(ValueError, match="spatial"):
        sf.tl.impute(no_xy)


def test_log_normalised_input_is_flagged(synthetic):
    sf.pp.mask_entries  # noqa: B018 - the module is importable
    lognorm = synthetic.copy()
    counts = np.asarray(lognorm.layers["counts"], dtype=np.float32)
    lognorm.X = np.log1p(counts / counts.sum(1, keepdims=True).clip(1) * 1e4)
    with pytest.warns(UserWarning, match="look log-normalised.*expects raw counts"):
        sf.tl.embed(lognorm, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        from scfound.tl._run import check_counts

        check_counts(synthetic, "counts", "SpaFormer")  # counts: silent
    empty = synthetic.copy()
    empty.layers["counts"] = np.zeros(empty.shape, dtype=np.float32)
    with pytest.raises(ValueError, match=r"adata.layers\['counts'\] holds no counts"):
        sf.tl.embed(empty, layer="counts", **FAST)


def test_sample_key_is_a_deprecated_alias_of_group_key(synthetic):
    with pytest.warns(FutureWarning, match="sample_key.*deprecated.*group_key"):
        sf.tl.embed(synthetic, layer="counts", sample_key="fov", **FAST)
    assert synthetic.uns["scfound"]["embed"]["X_spaformer"]["group_key"] == "fov"
    with pytest.raises(ValueError, match="pass `group_key` only"):
        sf.tl.embed(synthetic, layer="counts", sample_key="fov", group_key="other", **FAST)


def test_mudata_modalities(synthetic):
    protein = ad.AnnData(np.ones((synthetic.n_obs, 3), dtype=np.float32))
    protein.obs_names = synthetic.obs_names
    mdata = MuData({"rna": synthetic, "prot": protein})
    sf.tl.embed(mdata, layer="counts", **FAST)  # "rna" by default
    assert "X_spaformer" in mdata.mod["rna"].obsm
    assert "X_spaformer" not in mdata.mod["prot"].obsm
    with pytest.raises(KeyError, match=r"modality 'atac' not found.*'rna', 'prot'"):
        sf.tl.embed(mdata, mod="atac")
    with pytest.raises(ValueError, match="applies to a MuData"):
        sf.tl.embed(synthetic, mod="rna")


def test_imputed_anndata(halves):
    query = halves[0].copy()
    frame = pd.DataFrame(
        np.ones((query.n_obs, 2), dtype=np.float32), index=query.obs_names, columns=["a", "b"]
    )
    query.obsm["stai_imputed"] = frame
    view = sf.tl.imputed_anndata(query)
    assert view.shape == (query.n_obs, 2) and list(view.var_names) == ["a", "b"]
    assert "spatial" in view.obsm
    with pytest.raises(KeyError, match="cellplm_imputed"):
        sf.tl.imputed_anndata(query, method="cellplm")


def test_the_docs_table_lists_what_the_registry_supports():
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "verbs.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| verb |"))
    methods = [c.strip() for c in header.strip("|").split("|")][1:-1]
    assert sorted(methods) == sorted(ADAPTERS)
    for verb in VERBS:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{verb}` |"))
        cells = [c.strip() for c in row.strip("|").split("|")][1 : 1 + len(methods)]
        documented = {m for m, c in zip(methods, cells, strict=True) if c == "yes"}
        assert documented == {m for m in ADAPTERS if verb in ADAPTERS[m].verbs()}, verb
    # every option of every method is documented in its section
    for name, adapter in ADAPTERS.items():
        section = text.split(f"### `{name}`")[1].split("###")[0]
        for verb in adapter.verbs():
            common = ("genes", "scale", "labels_key")
            for option in adapter.options(verb, common):
                assert f"`{option}`" in section, (name, verb, option)


def test_key_added_never_replaces_the_callers_data(synthetic):
    before = _snapshot(synthetic)
    with pytest.raises(ValueError, match=r"reads in this call"):
        sf.tl.impute(synthetic, layer="counts", key_added="counts", **FAST)
    with pytest.raises(ValueError, match=r"adata.obsm\['spatial'\], which tl.embed reads"):
        sf.tl.embed(synthetic, layer="counts", key_added="spatial", **FAST)
    synthetic.obsm["X_umap"] = np.zeros((synthetic.n_obs, 2))
    with pytest.raises(ValueError, match=r"adata.obsm\['X_umap'\] already exists"):
        sf.tl.embed(synthetic, layer="counts", key_added="X_umap", **FAST)
    del synthetic.obsm["X_umap"]
    synthetic.obs["mine_prediction"] = "x"
    with pytest.raises(ValueError, match=r"adata.obs\['mine_prediction'\] already exists"):
        sf.tl.annotate(synthetic, "cell_type", key_added="mine", layer="counts", **FAST)
    del synthetic.obs["mine_prediction"]
    after = _snapshot(synthetic)
    assert after["uns"] == before["uns"] and set(after["obsm"]) == set(before["obsm"])
    np.testing.assert_array_equal(after["layers"]["counts"], before["layers"]["counts"])
    # a rerun under the same key replaces its own earlier result
    sf.tl.embed(synthetic, layer="counts", key_added="X_mine", **FAST)
    sf.tl.embed(synthetic, layer="counts", key_added="X_mine", seed=1, **FAST)
    assert list(synthetic.uns["scfound"]["embed"]) == ["X_mine"]
    synthetic.uns["scfound"] = "not a dict"
    with pytest.raises(TypeError, match=r"must be a dict of run records"):
        sf.tl.embed(synthetic, layer="counts", key_added="X_other", **FAST)
    assert "X_other" not in synthetic.obsm


def test_annotation_needs_two_cell_types(halves):
    query, reference = (x.copy() for x in halves)
    reference.obs["one"] = "T cell"
    with pytest.raises(ValueError, match=r"reference.obs\['one'\] holds 1 cell type"):
        sf.tl.annotate(query, "one", "stai", reference=reference, layer="counts")
    assert "scfound" not in query.uns
