import numpy as np
import pandas as pd
import pytest
from anndata import read_h5ad

import scfound as sf
from scfound import _demo
from scfound._demo import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    """One run of the demo at 1 epoch, shared by the tests of its outputs."""
    out = tmp_path_factory.mktemp("demo")
    main(["--max-epochs", "1", "--out", str(out)])
    return out


def test_demo_prints_scores(tmp_path, capsys):
    main(["--max-epochs", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "SpaFormer" in out and "held-out scores" in out
    for rank in ("best", "median", "worst"):
        assert rank in out


def test_demo_h5ad_holds_mask_imputation_and_run_record(demo_out):
    adata = read_h5ad(demo_out / _demo.H5AD)
    for layer in ("counts", "heldout", "heldout_counts", "spaformer_imputed"):
        assert layer in adata.layers
    imputed = adata.layers["spaformer_imputed"]
    assert imputed.shape == adata.shape and imputed.dtype == np.float32
    assert np.isfinite(imputed).all() and (imputed >= 0).all()
    run = adata.uns["scfound"]["impute"]["spaformer_imputed"]
    assert run["method"] == "spaformer" and run["layer"] == "heldout_counts"
    assert run["max_epochs"] == 1 and run["epochs"] == 1
    # pl finds the imputation from the record alone
    assert sf._keys.find_imputed(adata) == ("layers", "spaformer_imputed")


def test_demo_score_tables_match_the_metrics(demo_out):
    adata = read_h5ad(demo_out / _demo.H5AD)
    mask = np.asarray(adata.layers["heldout"], dtype=bool)
    genes = pd.read_csv(demo_out / _demo.GENE_SCORES_CSV, index_col="gene")
    assert list(genes.index) == list(adata.var_names)
    assert {"pcc", "scc", "rmse", "n"} <= set(genes.columns)
    expected = sf.metrics.per_gene_scores(
        adata.layers["counts"], adata.layers["spaformer_imputed"], mask
    )
    np.testing.assert_allclose(genes["pcc"], expected["pcc"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(genes["n"], mask.sum(0))
    overall = pd.read_csv(demo_out / _demo.OVERALL_SCORES_CSV, index_col="method")
    assert list(overall.index) == ["zero fill", "gene mean", "SpaFormer"]
    assert {"rmse", "pearson", "cosine"} <= set(overall.columns)
    s = sf.metrics.imputation_scores(
        adata.layers["counts"], adata.layers["spaformer_imputed"], mask
    )
    assert overall.loc["SpaFormer", "rmse"] == pytest.approx(s["rmse"], rel=1e-6)
    assert overall.loc["SpaFormer", "pearson"] == pytest.approx(s["pearson"], rel=1e-6)
    assert (overall["n_heldout"] == mask.sum()).all()


def test_demo_model_reloads_and_reproduces_the_imputation(demo_out):
    adata = read_h5ad(demo_out / _demo.H5AD)
    model = sf.SpaFormer.load(str(demo_out / _demo.MODEL_DIR))
    assert model.is_trained
    np.testing.assert_allclose(
        _demo.imputed_counts(model), adata.layers["spaformer_imputed"], rtol=1e-4, atol=1e-5
    )


def test_demo_figures(demo_out):
    for name in (_demo.MAPS_PNG, _demo.SCATTER_PNG):
        path = demo_out / name
        assert path.read_bytes()[:8] == PNG_MAGIC, name
        assert path.stat().st_size > 10_000, name


def test_demo_equals_tl_impute():
    """The demo's model API route gives what ``sf.tl.impute`` gives with the same seed."""
    adatas = []
    for _ in range(2):
        adata = sf.datasets.osmfish()
        sf.pp.mask_entries(adata, fraction=0.3, layer="counts", seed=0)
        adatas.append(adata)
    model = _demo.fit_spaformer(adatas[0], layer="heldout_counts", max_epochs=1, seed=0)
    ours = _demo.imputed_counts(model)
    sf.tl.impute(adatas[1], layer="heldout_counts", max_epochs=1, seed=0)
    np.testing.assert_allclose(ours, adatas[1].layers["spaformer_imputed"], rtol=1e-5, atol=1e-6)


def test_pick_genes_best_median_worst():
    scores = pd.DataFrame({"pcc": [0.2, np.nan, 0.9, 0.5, 0.1]}, index=list("abcde"))
    assert _demo.pick_genes(scores) == {"best": "c", "median": "a", "worst": "e"}
    with pytest.raises(ValueError, match="finite"):
        _demo.pick_genes(scores.iloc[[1]])
