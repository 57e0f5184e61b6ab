"""Inputs at inference: genes matched by name, values checked as at setup, untrained models refused.

Every entry point that applies a model to an AnnData (the models' getters and the ``tl`` verbs
with ``model=``) is given the same bad inputs; each must raise a clear error and leave the
caller's AnnData exactly as it was.
"""

from collections.abc import Callable

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scfound as sf
from conftest import assert_unchanged, fingerprint
from scfound._utils import check_expression

SPAFORMER = {"n_hidden": 16, "n_heads": 2, "n_latent": 4}
CELLPLM = {"n_hidden": 16, "n_heads": 2, "n_layers": 1, "n_latent": 4, "n_decoder_hidden": 16}
STAI = {"n_folds": 2, "mmd_cells": 64}
#: how the tl verbs read the data for a given CellPLM
CELLPLM_ARGS = {"layer": "counts", "group_key": "fov"}


# ------------------------------------------------------------------------------ fixtures
def _base() -> ad.AnnData:
    """120 cells, 12 genes, 2 FOVs; raw counts in ``layers["counts"]``."""
    adata = sf.datasets.synthetic_spatial(120, 12, 3, seed=0, n_fovs=2)
    adata.obs["fov"] = adata.obs["fov"].astype(str)
    return adata


@pytest.fixture(scope="module")
def models():
    """A trained SpaFormer and CellPLM, set up on their own copies of :func:`_base`."""
    spaformer_data = _base()
    sf.SpaFormer.setup_anndata(spaformer_data, layer="counts", group_key="fov")
    spaformer = sf.SpaFormer(spaformer_data, **SPAFORMER)
    spaformer.train(max_epochs=1, enable_progress_bar=False)
    cellplm_data = _base()
    sf.CellPLM.setup_anndata(cellplm_data, layer="counts", group_key="fov")
    cellplm = sf.CellPLM(cellplm_data, **CELLPLM)
    cellplm.train(max_epochs=1, enable_progress_bar=False)
    return {"spaformer": spaformer, "cellplm": cellplm}


@pytest.fixture(scope="module")
def stai_model():
    """A trained stAI on a spatial half (8 of 12 genes) and a reference half (12 genes)."""
    data = _base()
    is_ref = np.random.default_rng(0).random(data.n_obs) < 0.5
    spatial, reference = data[~is_ref, :8].copy(), data[is_ref].copy()
    del reference.obsm["spatial"]
    model = sf.tl.impute(
        spatial,
        method="stai",
        reference=reference,
        layer="counts",
        reference_layer="counts",
        max_epochs=1,
        model_kwargs=STAI,
        return_model=True,
    )
    del spatial.obsm["stai_imputed"], spatial.uns["scfound"]
    return model, spatial, reference


# -------------------------------------------------------------------------- bad inputs
def _with_counts(adata: ad.AnnData, counts: np.ndarray, genes) -> ad.AnnData:
    out = ad.AnnData(
        X=counts.astype(np.float32),
        obs=adata.obs.copy(),
        var=pd.DataFrame(index=pd.Index(genes, dtype=str)),
        obsm={"spatial": adata.obsm["spatial"].copy()},
        layers={"counts": counts},
    )
    return out


def reversed_genes(adata):
    return adata[:, adata.var_names[::-1]].copy()


def missing_gene(adata):
    return adata[:, adata.var_names[1:]].copy()


def extra_gene(adata):
    counts = np.hstack([adata.layers["counts"], np.ones((adata.n_obs, 1), np.float32)])
    return _with_counts(adata, counts, [*adata.var_names, "extra_gene"])


def renamed_gene(adata):
    """Same number of genes, one of another name (a check on counts alone lets it through)."""
    genes = list(adata.var_names)
    genes[0] = "other_gene"
    return _with_counts(adata, adata.layers["counts"].copy(), genes)


def nan_value(adata):
    adata = adata.copy()
    adata.layers["counts"][0, 0] = np.nan
    return adata


def negative_value(adata):
    adata = adata.copy()
    adata.layers["counts"][0, 0] = -1
    return adata


def huge_value(adata):
    """A finite float64 value that is infinite in float32."""
    adata = adata.copy()
    adata.layers["counts"] = adata.layers["counts"].astype(np.float64)
    adata.layers["counts"][0, 0] = 1e39
    return adata


REVERSED = (ValueError, "same genes in another order; reorder with adata\\[:, model_genes\\]")
MISSING = (ValueError, r"1 model genes missing from adata.var_names \(e.g. \['gene_0'\]\)")
EXTRA = (ValueError, r"1 genes the model does not know \(e.g. \['extra_gene'\]\)")
RENAMED = (ValueError, r"missing from adata.var_names \(e.g. \['gene_0'\]\).*\['other_gene'\]")
NAN = (ValueError, r"adata.layers\['counts'\] contains 1 NaN or infinite values")
NEGATIVE = (ValueError, r"adata.layers\['counts'\] contains negative values \(min -1\)")
HUGE = (ValueError, r"adata.layers\['counts'\] contains 1 values too large for float32 \(max")
VALUES = {"nan": (nan_value, NAN), "negative": (negative_value, NEGATIVE)}
VALUES["huge"] = (huge_value, HUGE)
GENES = {
    "reversed": (reversed_genes, REVERSED),
    "missing": (missing_gene, MISSING),
    "extra": (extra_gene, EXTRA),
    "renamed": (renamed_gene, RENAMED),
}
#: the tl verbs reorder the genes of a SpaFormer's input and refuse only other gene sets
TL_GENES = {
    name: (make, (error, words + ".*select them with adata\\[:, model.adata.var_names\\]"))
    for name, (make, (error, words)) in GENES.items()
    if name != "reversed"
}


def _spaformer_latent(models, adata):
    return models["spaformer"].get_latent_representation(adata)


def _spaformer_imputed(models, adata):
    return models["spaformer"].get_imputed_expression(adata, genes=["gene_1"])


def _cellplm_latent(models, adata):
    return models["cellplm"].get_latent_representation(adata)


def _cellplm_imputed(models, adata):
    return models["cellplm"].get_imputed_expression(adata)


def _cellplm_denoised(models, adata):
    return models["cellplm"].get_denoised_expression(adata)


def _tl_impute_spaformer(models, adata):
    return sf.tl.impute(adata, model=models["spaformer"])


def _tl_embed_spaformer(models, adata):
    return sf.tl.embed(adata, model=models["spaformer"])


def _tl_embed_cellplm(models, adata):
    return sf.tl.embed(adata, method="cellplm", model=models["cellplm"], **CELLPLM_ARGS)


def _tl_denoise_cellplm(models, adata):
    return sf.tl.denoise(adata, method="cellplm", model=models["cellplm"], **CELLPLM_ARGS)


MODEL_API = [_spaformer_latent, _spaformer_imputed, _cellplm_latent, _cellplm_imputed]
MODEL_API.append(_cellplm_denoised)


def _cases(entries: list[Callable], bad: dict) -> list:
    return [
        pytest.param(entry, make, error, words, id=f"{entry.__name__[1:]}-{name}")
        for entry in entries
        for name, (make, (error, words)) in bad.items()
    ]


CASES = (
    _cases(MODEL_API, {**GENES, **VALUES})
    + _cases([_tl_impute_spaformer, _tl_embed_spaformer], {**TL_GENES, **VALUES})
    # CellPLM reads any panel by name (from_model): only the values are refused
    + _cases([_tl_embed_cellplm, _tl_denoise_cellplm], VALUES)
)


# ----------------------------------------------------------------------------- helpers
_fingerprint, _assert_unchanged = fingerprint, assert_unchanged


# -------------------------------------------------------------------------------- tests
@pytest.mark.parametrize(("entry", "make", "error", "words"), CASES)
def test_bad_input_is_refused_and_left_unchanged(models, entry, make, error, words):
    adata = make(_base())
    before = _fingerprint(adata)
    with pytest.raises(error, match=words):
        entry(models, adata)
    _assert_unchanged(adata, before)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (missing_gene, r"1 model genes missing from adata.var_names"),
        (extra_gene, r"1 genes the model does not know"),
        (nan_value, r"adata.layers\['counts'\] differ from the spatial data"),
        (negative_value, r"adata.layers\['counts'\] differ from the spatial data"),
        (huge_value, r"adata.layers\['counts'\] differ from the spatial data"),
    ],
    ids=["missing", "extra", "nan", "negative", "huge"],
)
@pytest.mark.parametrize("verb", ["impute", "annotate"])
def test_stai_model_refuses_data_it_was_not_set_up_with(stai_model, make, words, verb):
    model, spatial, reference = stai_model
    adata = make(spatial)
    before = _fingerprint(adata)
    args = {"method": "stai", "reference": reference, "model": model, "layer": "counts"}
    with pytest.raises(ValueError, match=words):
        if verb == "impute":
            sf.tl.impute(adata, **args)
        else:
            sf.tl.annotate(adata, "cell_type", **args)
    _assert_unchanged(adata, before)


def test_stai_model_matches_genes_by_name(stai_model):
    model, spatial, reference = stai_model
    args = {"method": "stai", "reference": reference, "model": model, "layer": "counts"}
    same, flipped = spatial.copy(), reversed_genes(spatial)
    sf.tl.impute(same, **args)
    sf.tl.impute(flipped, **args)
    pd.testing.assert_frame_equal(flipped.obsm["stai_imputed"], same.obsm["stai_imputed"])


def test_tl_reorders_genes_to_the_model_and_back(models):
    own, flipped = _base(), reversed_genes(_base())
    for adata in (own, flipped):
        sf.tl.impute(adata, model=models["spaformer"])
        sf.tl.embed(adata, model=models["spaformer"])
    # two runs of the model: equal up to float rounding (which differs between GPU runs)
    np.testing.assert_allclose(
        flipped.layers["spaformer_imputed"],
        own.layers["spaformer_imputed"][:, ::-1],
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        flipped.obsm["X_spaformer"], own.obsm["X_spaformer"], rtol=1e-5, atol=1e-6
    )
    # the model's own order gives the model's own result
    expected = models["spaformer"].get_imputed_expression().to_numpy()
    np.testing.assert_allclose(own.layers["spaformer_imputed"], expected, rtol=1e-5, atol=1e-6)
    # and the caller's reversed copy kept its order and keys (only the results were added)
    assert list(flipped.var_names) == list(_base().var_names[::-1])
    assert set(flipped.layers) == {"counts", "spaformer_imputed"}


def test_tl_reads_the_callers_layer_under_the_models_name(models):
    own, renamed = _base(), _base()
    renamed.layers["raw"] = renamed.layers.pop("counts")
    sf.tl.impute(own, model=models["spaformer"])
    sf.tl.impute(renamed, model=models["spaformer"], layer="raw")
    np.testing.assert_allclose(
        renamed.layers["spaformer_imputed"], own.layers["spaformer_imputed"], rtol=1e-5, atol=1e-6
    )
    bad = nan_value(_base())
    bad.layers["raw"] = bad.layers.pop("counts")
    with pytest.raises(ValueError, match=r"adata.layers\['raw'\] contains 1 NaN"):
        sf.tl.impute(bad, model=models["spaformer"], layer="raw")


def test_cellplm_tl_matches_genes_by_name(models):
    own, flipped = _base(), reversed_genes(_base())
    for adata in (own, flipped):
        _tl_embed_cellplm(models, adata)
        _tl_denoise_cellplm(models, adata)
    np.testing.assert_allclose(flipped.obsm["X_cellplm"], own.obsm["X_cellplm"], atol=1e-5)
    np.testing.assert_allclose(
        flipped.layers["cellplm_denoised"],
        own.layers["cellplm_denoised"][:, ::-1],
        rtol=1e-3,  # summation order differs; a wrong gene order changes values by ~0.5
        atol=1e-3,
    )


@pytest.mark.parametrize("name", ["spaformer", "cellplm"])
def test_model_api_accepts_new_data_with_the_models_genes(models, name):
    model = models[name]
    new = _base()
    z = model.get_latent_representation(new)
    np.testing.assert_allclose(z, model.get_latent_representation(), rtol=1e-5, atol=1e-6)
    # genes put in the model's order by the caller are accepted
    flipped = reversed_genes(_base())
    np.testing.assert_allclose(
        model.get_latent_representation(flipped[:, model.adata.var_names].copy()), z, atol=1e-6
    )


def test_untrained_models_are_refused(models):
    adata = _base()
    sf.SpaFormer.setup_anndata(adata, layer="counts", group_key="fov")
    with pytest.raises(RuntimeError, match="SpaFormer is not trained"):
        sf.SpaFormer(adata, **SPAFORMER).get_latent_representation()
    adata = _base()
    sf.CellPLM.setup_anndata(adata, layer="counts", group_key="fov")
    fresh = sf.CellPLM(adata, **CELLPLM)
    for getter in (fresh.get_latent_representation, fresh.get_imputed_expression):
        with pytest.raises(RuntimeError, match="neither been trained nor given pre-trained"):
            getter()
    new = _base()
    before = _fingerprint(new)
    with pytest.raises(RuntimeError, match="neither been trained"):
        fresh.get_latent_representation(new)
    _assert_unchanged(new, before)
    # an untrained model carried over stays untrained; a trained one is usable zero-shot
    query = _base()
    sf.CellPLM.setup_anndata(query, layer="counts")
    with pytest.raises(RuntimeError, match="neither been trained"):
        sf.CellPLM.from_model(fresh, query).get_latent_representation()
    zero_shot = sf.CellPLM.from_model(models["cellplm"], query)
    assert zero_shot.pretrained_ and not zero_shot.is_trained_
    assert np.isfinite(zero_shot.get_latent_representation()).all()
    # tl: an untrained CellPLM is refused unless it is trained on the data first
    with pytest.raises(RuntimeError, match="neither been trained"):
        sf.tl.embed(_base(), method="cellplm", model=fresh, **CELLPLM_ARGS)


def test_setup_refuses_float32_overflow_too():
    adata = huge_value(_base())
    with pytest.raises(HUGE[0], match=HUGE[1]):
        sf.SpaFormer.setup_anndata(adata, layer="counts")


@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_check_expression_float32_overflow(fmt):
    X = np.zeros((3, 2))
    X[1, 1] = -2e39
    X[2, 0] = 5e39
    X = sp.csr_matrix(X) if fmt == "csr" else X
    with pytest.raises(ValueError, match=r"2 values too large for float32 \(max \|value\| 5e\+39"):
        check_expression(X, "m", counts=False)
    ok = np.full((2, 2), np.finfo(np.float32).max, dtype=np.float64)
    check_expression(ok, "m")  # the largest float32 itself is fine
    check_expression(ok.astype(np.float32), "m")
