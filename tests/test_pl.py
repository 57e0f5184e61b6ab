import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData
from matplotlib.figure import Figure

from scfound import _keys, metrics, pl

GENES = ["g0", "g1", "g2", "g3", "g4", "g5"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def adata() -> AnnData:
    rng = np.random.default_rng(0)
    n_obs = 80
    counts = rng.poisson(2.0, size=(n_obs, len(GENES))).astype(np.float32)
    ad = AnnData(X=counts.copy())
    ad.var_names = GENES
    ad.layers["counts"] = sp.csr_matrix(counts)
    ad.layers["spaformer_imputed"] = counts + rng.random(counts.shape).astype(np.float32)
    ad.layers["mask"] = rng.random(counts.shape) < 0.3
    ad.obsm["spatial"] = rng.uniform(0, 100, size=(n_obs, 2))
    return ad


def _png_ok(path) -> bool:
    return path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ imputed_genes
def test_imputed_genes_two_panels_per_gene_and_colorbars(adata):
    fig = pl.imputed_genes(adata, ["g0", "g3"], show=False)
    assert isinstance(fig, Figure)
    # 2 genes x (measured, imputed) + one colour bar per gene
    assert len(fig.axes) == 2 * 2 + 2
    titles = [ax.get_title() for ax in fig.axes[:4]]
    assert titles == ["g0: measured", "imputed", "g3: measured", "imputed"]


def test_imputed_genes_shared_colour_scale_and_normalisation(adata):
    fig = pl.imputed_genes(adata, "g1", show=False)
    measured_ax, imputed_ax = fig.axes[:2]
    m_clim = measured_ax.collections[0].get_clim()
    i_clim = imputed_ax.collections[0].get_clim()
    assert m_clim == i_clim
    # log1p of counts normalised to the median total
    counts = adata.layers["counts"].toarray()
    totals = counts.sum(1)
    expected = np.log1p(counts[:, 1] / totals * np.median(totals))
    shown = np.asarray(measured_ax.collections[0].get_array())
    np.testing.assert_allclose(np.sort(shown), np.sort(expected), rtol=1e-5)


def test_imputed_genes_raw_values(adata):
    fig = pl.imputed_genes(adata, "g2", normalize=False, show=False)
    shown = np.asarray(fig.axes[1].collections[0].get_array())
    np.testing.assert_allclose(np.sort(shown), np.sort(adata.layers["spaformer_imputed"][:, 2]))


def test_imputed_genes_mask_panel(adata):
    fig = pl.imputed_genes(adata, ["g0", "g1", "g2"], mask_layer="mask", ncols=2, show=False)
    # 3 genes x 3 panels, one unused gene slot removed, plus 3 colour bars
    assert len(fig.axes) == 3 * 3 + 3
    held_ax = fig.axes[2]
    assert held_ax.get_title() == "measured (held-out entries)"
    n_held = int(adata.layers["mask"][:, 0].sum())
    grey, coloured = held_ax.collections
    assert len(coloured.get_offsets()) == n_held
    assert len(grey.get_offsets()) == adata.n_obs - n_held


def test_imputed_genes_save_writes_png(adata, tmp_path):
    path = tmp_path / "sub" / "maps.png"
    fig = pl.imputed_genes(adata, ["g0"], save=path, show=False)
    assert isinstance(fig, Figure)
    assert _png_ok(path)


def test_imputed_genes_show_false_closes_in_pyplot(adata):
    fig = pl.imputed_genes(adata, "g0", show=False)
    assert fig.number not in plt.get_fignums()
    fig = pl.imputed_genes(adata, "g0")
    assert fig.number in plt.get_fignums()


def test_imputed_genes_missing_gene(adata):
    with pytest.raises(KeyError, match=r"nope.*also_missing|also_missing.*nope"):
        pl.imputed_genes(adata, ["g0", "nope", "also_missing"], show=False)


def test_imputed_genes_missing_layers(adata):
    with pytest.raises(KeyError, match="raw_counts"):
        pl.imputed_genes(adata, "g0", measured_layer="raw_counts", show=False)
    del adata.layers["spaformer_imputed"]
    with pytest.raises(KeyError, match="spaformer_imputed"):
        pl.imputed_genes(adata, "g0", show=False)


def test_imputed_genes_missing_mask_and_coordinates(adata):
    with pytest.raises(KeyError, match="heldout"):
        pl.imputed_genes(adata, "g0", mask_layer="heldout", show=False)
    with pytest.raises(KeyError, match="xy"):
        pl.imputed_genes(adata, "g0", spatial_key="xy", show=False)


def test_imputed_genes_bad_values(adata):
    adata.layers["neg"] = -np.ones((adata.n_obs, adata.n_vars), dtype=np.float32)
    with pytest.raises(ValueError, match="normalize=False"):
        pl.imputed_genes(adata, "g0", imputed_layer="neg", show=False)
    adata.layers["counts_mask"] = adata.layers["counts"]
    with pytest.raises(ValueError, match="boolean"):
        pl.imputed_genes(adata, "g0", mask_layer="counts_mask", show=False)


# ------------------------------------------------------------------ imputed_genes from obsm
@pytest.fixture
def adata_obsm(adata) -> AnnData:
    """``adata`` with a reference-based imputation of one measured and two unmeasured genes."""
    rng = np.random.default_rng(2)
    adata.obsm["stai_imputed"] = pd.DataFrame(
        rng.normal(5.0, 2.0, size=(adata.n_obs, 3)),
        index=adata.obs_names,
        columns=["Mbp", "g1", "Mog"],
    )
    return adata


def test_imputed_genes_from_obsm_measured_and_unmeasured(adata_obsm):
    fig = pl.imputed_genes(adata_obsm, ["g1", "Mbp"], imputed_key="stai_imputed", show=False)
    # g1: measured + imputed panels; Mbp: imputed panel only (its measured slot removed);
    # one colour bar per panel, as the two panels of g1 are on different scales
    assert len(fig.axes) == 3 + 3
    titles = [ax.get_title() for ax in fig.axes[:3]]
    assert titles == ["g1: measured", "imputed", "Mbp: imputed (not measured)"]
    frame = adata_obsm.obsm["stai_imputed"]
    measured_ax, g1_ax, mbp_ax = fig.axes[:3]
    # values as stored (not normalised), each on its own colour scale
    for ax, gene in ((g1_ax, "g1"), (mbp_ax, "Mbp")):
        shown = np.asarray(ax.collections[0].get_array())
        np.testing.assert_allclose(np.sort(shown), np.sort(frame[gene]))
        assert ax.collections[0].get_clim() == (frame[gene].min(), frame[gene].max())
    # the measured panel is the same as without imputed_key
    reference = pl.imputed_genes(adata_obsm, "g1", show=False)
    np.testing.assert_allclose(
        np.asarray(measured_ax.collections[0].get_array()),
        np.asarray(reference.axes[0].collections[0].get_array()),
    )


def test_imputed_genes_from_obsm_unmeasured_only_and_mask(adata_obsm, tmp_path):
    fig = pl.imputed_genes(
        adata_obsm, ["Mbp", "Mog"], imputed_key="stai_imputed", mask_layer="mask", show=False
    )
    # no measured gene: one panel and one colour bar per gene
    assert len(fig.axes) == 2 + 2
    assert [ax.get_title() for ax in fig.axes[:2]] == [
        "Mbp: imputed (not measured)",
        "Mog: imputed (not measured)",
    ]
    path = tmp_path / "obsm.png"
    fig = pl.imputed_genes(
        adata_obsm,
        ["g1", "Mog"],
        imputed_key="stai_imputed",
        mask_layer="mask",
        ncols=2,
        save=path,
        show=False,
    )
    # g1: measured, imputed, held-out; Mog: imputed in the column of the imputed panels
    assert [ax.get_title() for ax in fig.axes[:4]] == [
        "g1: measured",
        "imputed",
        "measured (held-out entries)",
        "Mog: imputed (not measured)",
    ]
    assert len(fig.axes) == 4 + 4
    held_clim = fig.axes[2].collections[-1].get_clim()
    assert held_clim == fig.axes[0].collections[0].get_clim()
    assert _png_ok(path)


def test_imputed_genes_from_obsm_errors(adata_obsm):
    with pytest.raises(KeyError, match=r"'stai'.*'spatial'.*'stai_imputed'"):
        pl.imputed_genes(adata_obsm, "Mbp", imputed_key="stai", show=False)
    with pytest.raises(KeyError, match=r"neither in adata.var_names nor imputed: \['Nope'\]"):
        pl.imputed_genes(adata_obsm, ["Mbp", "Nope"], imputed_key="stai_imputed", show=False)
    with pytest.raises(KeyError, match=r"without imputation.*\['g0'\]"):
        pl.imputed_genes(adata_obsm, ["g0"], imputed_key="stai_imputed", show=False)
    adata_obsm.obsm["array"] = np.zeros((adata_obsm.n_obs, 2))
    with pytest.raises(TypeError, match="DataFrame"):
        pl.imputed_genes(adata_obsm, "Mbp", imputed_key="array", show=False)
    adata_obsm.obsm["stai_imputed"].iloc[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pl.imputed_genes(adata_obsm, "Mbp", imputed_key="stai_imputed", show=False)


# ------------------------------------------------------------------ imputed_genes by method
def _record(adata: AnnData, verb: str, key_added: str, method: str, **extra) -> None:
    """A run record as the tl verbs write it, ``uns['scfound'][verb][key_added]``."""
    runs = adata.uns.setdefault("scfound", {}).setdefault(verb, {})
    runs[key_added] = {"method": method, "key_added": key_added, **extra}


def _shown(ax) -> np.ndarray:
    return np.sort(np.asarray(ax.collections[-1].get_array()))


def test_imputed_genes_default_method_is_the_latest_impute_run(adata_obsm):
    # nothing recorded: SpaFormer's layer
    fig = pl.imputed_genes(adata_obsm, "g1", normalize=False, show=False)
    np.testing.assert_allclose(
        _shown(fig.axes[1]), np.sort(adata_obsm.layers["spaformer_imputed"][:, 1])
    )
    _record(adata_obsm, "impute", "spaformer_imputed", "spaformer")
    _record(adata_obsm, "impute", "stai_imputed", "stai")
    # the latest run (stAI) wrote obsm["stai_imputed"]: Mbp is found there
    fig = pl.imputed_genes(adata_obsm, ["g1", "Mbp"], show=False)
    assert fig.axes[2].get_title() == "Mbp: imputed (not measured)"
    np.testing.assert_allclose(_shown(fig.axes[1]), np.sort(adata_obsm.obsm["stai_imputed"]["g1"]))
    # an explicit method, or explicit keys, win over the records
    fig = pl.imputed_genes(adata_obsm, "g1", method="spaformer", normalize=False, show=False)
    np.testing.assert_allclose(
        _shown(fig.axes[1]), np.sort(adata_obsm.layers["spaformer_imputed"][:, 1])
    )
    fig = pl.imputed_genes(
        adata_obsm, "g1", imputed_layer="spaformer_imputed", normalize=False, show=False
    )
    np.testing.assert_allclose(
        _shown(fig.axes[1]), np.sort(adata_obsm.layers["spaformer_imputed"][:, 1])
    )
    with pytest.raises(ValueError, match="not both"):
        pl.imputed_genes(
            adata_obsm, "g1", imputed_layer="spaformer_imputed", imputed_key="stai_imputed"
        )


def test_imputed_genes_follows_the_recorded_key_added(adata):
    adata.layers["second_run"] = adata.layers["spaformer_imputed"] * 2
    _record(adata, "impute", "spaformer_imputed", "spaformer")
    _record(adata, "impute", "second_run", "spaformer")
    for method in (None, "spaformer"):
        fig = pl.imputed_genes(adata, "g2", method=method, normalize=False, show=False)
        np.testing.assert_allclose(_shown(fig.axes[1]), np.sort(adata.layers["second_run"][:, 2]))
    # a recorded result that was deleted since falls back to the naming rule
    del adata.layers["second_run"]
    fig = pl.imputed_genes(adata, "g2", normalize=False, show=False)
    np.testing.assert_allclose(
        _shown(fig.axes[1]), np.sort(adata.layers["spaformer_imputed"][:, 2])
    )


def test_imputed_genes_reads_the_former_single_record(adata_obsm):
    adata_obsm.uns["scfound"] = {"impute": {"method": "stai", "key_added": "stai_imputed"}}
    fig = pl.imputed_genes(adata_obsm, "Mog", show=False)
    assert fig.axes[0].get_title() == "Mog: imputed (not measured)"


def test_imputed_genes_missing_method(adata):
    with pytest.raises(KeyError, match=r"method 'cellplm'.*'cellplm_imputed'.*tl\.impute"):
        pl.imputed_genes(adata, "g0", method="cellplm", show=False)


def test_imputed_genes_scores_in_titles_and_figure_title(adata, tmp_path):
    mask = adata.layers["mask"]
    scores = metrics.per_gene_scores(
        adata.layers["counts"], adata.layers["spaformer_imputed"], mask, gene_names=GENES
    )
    path = tmp_path / "scored.png"
    fig = pl.imputed_genes(
        adata, ["g0", "g4"], scores=scores, title="osmFISH, SpaFormer", save=path, show=False
    )
    titles = [ax.get_title() for ax in fig.axes[:4]]
    for gene, title in zip(["g0", "g4"], titles[1::2], strict=True):
        assert title.startswith("imputed\n")
        assert f"PCC {scores.at[gene, 'pcc']:.3f}" in title
        assert f"RMSE {scores.at[gene, 'rmse']:.3f}" in title
    assert titles[0] == "g0: measured"
    assert fig.get_suptitle() == "osmFISH, SpaFormer"
    assert _png_ok(path)
    # a gene without a score keeps the plain title
    fig = pl.imputed_genes(adata, "g1", scores=scores.drop(index="g1"), show=False)
    assert fig.axes[1].get_title() == "imputed"


# ------------------------------------------------------------------ annotation
@pytest.fixture
def labelled() -> AnnData:
    rng = np.random.default_rng(4)
    truth = rng.choice(["Astro", "Oligo", "Pyramidal"], 200, p=[0.2, 0.3, 0.5])
    predicted = np.where(rng.random(200) < 0.75, truth, rng.choice(["Astro", "Endo"], 200))
    ad = AnnData(np.zeros((200, 1), dtype=np.float32))
    ad.obs["celltype"] = pd.Categorical(truth)
    ad.obs["stai_prediction"] = pd.Categorical(predicted)
    return ad


def test_annotation_confusion_and_f1(labelled, tmp_path):
    path = tmp_path / "annotation.png"
    fig = pl.annotation(labelled, "celltype", save=path, show=False)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3  # confusion matrix, F1 bars, colour bar
    ax, ax_f1 = fig.axes[:2]
    assert ax.get_title() == "confusion matrix (row-normalised)"
    assert ax_f1.get_title() == "F1 per class"
    # true classes on the rows; the class that is only predicted is the last column
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Astro", "Oligo", "Pyramidal"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Astro", "Oligo", "Pyramidal", "Endo"]
    truth = labelled.obs["celltype"].astype(str).to_numpy()
    predicted = labelled.obs["stai_prediction"].astype(str).to_numpy()
    matrix = np.asarray(ax.images[0].get_array())
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    expected = pd.crosstab(truth, predicted, normalize="index")
    np.testing.assert_allclose(matrix, expected[["Astro", "Oligo", "Pyramidal", "Endo"]])
    widths = [bar.get_width() for bar in ax_f1.patches]
    f1 = metrics.per_class_scores(truth, predicted)["f1"]
    np.testing.assert_allclose(widths, f1[["Astro", "Oligo", "Pyramidal"]])
    accuracy = (truth == predicted).mean()
    assert f"accuracy {accuracy:.3f}" in fig.get_suptitle()
    assert _png_ok(path)


def test_annotation_counts_from_dataframe(labelled):
    obs = labelled.obs.rename(columns={"stai_prediction": "pred"})
    fig = pl.annotation(obs, "celltype", "pred", normalize=False, show=False)
    ax = fig.axes[0]
    assert ax.get_title() == "confusion matrix"
    matrix = np.asarray(ax.images[0].get_array())
    assert matrix.sum() == len(obs)
    np.testing.assert_array_equal(matrix.sum(axis=1), obs["celltype"].value_counts().sort_index())
    assert fig.number not in plt.get_fignums()


def test_annotation_errors(labelled):
    with pytest.raises(KeyError, match=r"truth_key 'cell_type'.*celltype"):
        pl.annotation(labelled, "cell_type", show=False)
    with pytest.raises(KeyError, match="prediction_key 'scanvi_prediction'"):
        pl.annotation(labelled, "celltype", "scanvi_prediction", show=False)
    labelled.obs["stai_prediction"] = labelled.obs["stai_prediction"].astype(object)
    labelled.obs.iloc[0, 1] = None
    with pytest.raises(ValueError, match=r"'stai_prediction'\] has 1 missing"):
        pl.annotation(labelled, "celltype", show=False)
    with pytest.raises(TypeError, match="AnnData"):
        pl.annotation(np.zeros(3), "celltype", show=False)


def test_annotation_by_method(labelled):
    rng = np.random.default_rng(5)
    truth = labelled.obs["celltype"].astype(str).to_numpy()
    labelled.obs["cellplm_prediction"] = pd.Categorical(
        np.where(rng.random(labelled.n_obs) < 0.5, truth, "Astro")
    )
    labelled.obs["cellplm_confidence"] = rng.random(labelled.n_obs)
    accuracy = {
        m: (labelled.obs[f"{m}_prediction"].astype(str).to_numpy() == truth).mean()
        for m in ("stai", "cellplm")
    }
    # two prediction columns and no record: the method must be named
    with pytest.raises(KeyError, match=r"several prediction columns.*method="):
        pl.annotation(labelled, "celltype", show=False)
    fig = pl.annotation(labelled, "celltype", method="cellplm", show=False)
    assert f"accuracy {accuracy['cellplm']:.3f}" in fig.get_suptitle()
    assert fig.axes[0].get_xlabel() == "predicted (cellplm_prediction)"
    # the latest annotate run is the default
    _record(labelled, "annotate", "stai", "stai")
    fig = pl.annotation(labelled, "celltype", show=False)
    assert f"accuracy {accuracy['stai']:.3f}" in fig.get_suptitle()
    # an explicit column still wins
    fig = pl.annotation(labelled, "celltype", "cellplm_prediction", show=False)
    assert f"accuracy {accuracy['cellplm']:.3f}" in fig.get_suptitle()
    with pytest.raises(KeyError, match=r"'scvi_prediction'.*tl\.annotate"):
        pl.annotation(labelled, "celltype", method="scvi", show=False)


# ------------------------------------------------------------------ gene_scores
def _scores(shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {"pcc": rng.uniform(0, 1, 5) - shift, "rmse": rng.uniform(0, 1, 5)},
        index=[f"gene{i}" for i in range(5)],
    )


def test_gene_scores_single_method_sorted(tmp_path):
    scores = _scores()
    path = tmp_path / "scores.png"
    fig = pl.gene_scores(scores, metric="pcc", save=path, show=False)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights == sorted(scores["pcc"], reverse=True)
    assert [t.get_text() for t in ax.get_xticklabels()] == list(
        scores["pcc"].sort_values(ascending=False).index
    )
    assert _png_ok(path)


def test_gene_scores_error_metric_sorted_ascending():
    scores = _scores()
    fig = pl.gene_scores(scores, metric="rmse", show=False)
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == sorted(scores["rmse"])


def test_gene_scores_several_methods_on_given_axes():
    fig, ax = plt.subplots()
    out = pl.gene_scores({"a": _scores(), "b": _scores(0.1), "c": _scores(0.2)}, ax=ax, show=False)
    assert out is fig
    assert len(ax.collections) == 3
    assert len(ax.get_legend().get_texts()) == 3
    # a figure passed in by the caller is not closed
    assert fig.number in plt.get_fignums()


def test_gene_scores_errors():
    with pytest.raises(KeyError, match="jsd"):
        pl.gene_scores(_scores(), metric="jsd", show=False)
    with pytest.raises(ValueError, match="empty"):
        pl.gene_scores({}, show=False)


# ------------------------------------------------------------------ training_curves
def _history() -> dict[str, pd.DataFrame]:
    epochs = pd.Index(range(5), name="epoch")
    return {
        "train_loss": pd.DataFrame({"train_loss": np.linspace(3, 1, 5)}, index=epochs),
        "validation_loss": pd.DataFrame(
            {"validation_loss": np.linspace(3.5, 1.5, 5)}, index=epochs
        ).astype(object),
        "reconstruction_loss_train": pd.DataFrame(
            {"reconstruction_loss_train": np.linspace(2, 1, 5)}, index=epochs
        ),
    }


def test_training_curves_default_keys(tmp_path):
    path = tmp_path / "curves.png"
    fig = pl.training_curves(_history(), save=path, show=False)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["train_loss", "validation_loss"]
    np.testing.assert_allclose(ax.get_lines()[1].get_ydata(), np.linspace(3.5, 1.5, 5))
    assert _png_ok(path)


def test_training_curves_from_model_with_extra_and_missing_keys():
    class Model:
        history = _history()

    with pytest.warns(UserWarning, match="not_logged"):
        fig = pl.training_curves(
            Model(), keys=["reconstruction_loss_train", "not_logged"], show=False
        )
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["train_loss", "validation_loss", "reconstruction_loss_train"]


def test_training_curves_epoch_suffix_and_skipped_validation():
    history = {"train_loss_epoch": pd.DataFrame({"train_loss_epoch": [2.0, 1.0]})}
    fig = pl.training_curves(history, show=False)
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["train_loss"]


def test_training_curves_errors():
    with pytest.raises(ValueError, match="empty"):
        pl.training_curves({}, show=False)

    class Untrained:
        history = None

    with pytest.raises(ValueError, match="train it first"):
        pl.training_curves(Untrained(), show=False)
    with pytest.raises(ValueError, match="nothing to plot"):
        pl.training_curves({"elbo_train": pd.DataFrame({"elbo_train": [1.0]})}, show=False)


# ------------------------------------------------------------------ naming rules (scfound._keys)
def test_key_naming_rules():
    assert _keys.imputed_key("spaformer") == "spaformer_imputed"
    assert _keys.denoised_key("cellplm") == "cellplm_denoised"
    assert _keys.embedding_key("cellplm") == "X_cellplm"
    assert _keys.gene_embedding_key("exprtf") == "X_exprtf"
    assert _keys.prediction_key("stai") == "stai_prediction"
    assert _keys.confidence_key("stai") == "stai_confidence"
    assert _keys.probabilities_key("stai") == "stai_probabilities"
    assert _keys.modality_key("scmognn", "protein") == "scmognn_protein"
    assert _keys.matching_key("scmognn") == "scmognn_matching"
    with pytest.raises(ValueError, match="non-empty string"):
        _keys.imputed_key("")


def test_run_records_order_and_lookup(adata):
    assert _keys.runs(adata, "impute") == {}
    assert _keys.latest_run(adata, "impute") is None
    assert _keys.default_method(adata, "impute") == "spaformer"
    with pytest.raises(ValueError, match="method="):
        _keys.default_method(adata, "embed")
    _record(adata, "impute", "b_run", "stai", time="2026-01-02T00:00:00")
    _record(adata, "impute", "a_run", "spaformer", time="2026-01-01T00:00:00")
    # time stamps order the runs (h5ad does not keep the order of a dict)
    assert list(_keys.runs(adata, "impute")) == ["a_run", "b_run"]
    assert _keys.latest_run(adata, "impute")[0] == "b_run"
    assert _keys.latest_run(adata, "impute", "spaformer")[0] == "a_run"
    assert _keys.default_method(adata, "impute") == "stai"
    adata.layers["a_run"] = adata.layers["spaformer_imputed"]
    assert _keys.find_imputed(adata, "spaformer") == ("layers", "a_run")
    with pytest.raises(KeyError, match="'b_run' or 'stai_imputed'"):
        _keys.find_imputed(adata)


def test_find_embedding_and_prediction(adata):
    adata.obsm["X_cellplm"] = np.zeros((adata.n_obs, 2))
    assert _keys.find_embedding(adata, "cellplm") == "X_cellplm"
    with pytest.raises(KeyError, match="'X_stai'"):
        _keys.find_embedding(adata, "stai")
    _record(adata, "embed", "X_cellplm", "cellplm")
    assert _keys.find_embedding(adata) == "X_cellplm"
    adata.obs["stai_prediction"] = "a"
    assert _keys.find_prediction(adata) == ("stai_prediction", None)
    adata.obs["stai_confidence"] = 1.0
    assert _keys.find_prediction(adata.obs, "stai") == ("stai_prediction", "stai_confidence")


# ------------------------------------------------------------------ multi-omics
PROTEINS = ["CD3", "CD4", "CD19"]


@pytest.fixture
def predicted() -> tuple[AnnData, pd.DataFrame, AnnData]:
    """RNA cells with a predicted protein panel, the measured CLR values and the counts."""
    rng = np.random.default_rng(1)
    n_obs = 60
    names = [f"c{i}" for i in range(n_obs)]
    counts = rng.poisson(rng.gamma(2.0, 10.0, (n_obs, len(PROTEINS)))).astype(np.float32)
    g = np.exp(np.log1p(counts).mean(1, keepdims=True))
    clr = np.log1p(counts / g)
    rna = AnnData(np.zeros((n_obs, 2), dtype=np.float32), obs=pd.DataFrame(index=names))
    noisy = clr + rng.normal(0.0, [0.05, 0.5, 2.0], clr.shape)  # r falls from CD3 to CD19
    rna.obsm["scmognn_adt"] = pd.DataFrame(noisy, index=names, columns=PROTEINS)
    _record(rna, "predict_modality", "scmognn_adt", "scmognn", target_kind="protein")
    adt = AnnData(counts, obs=pd.DataFrame(index=names), var=pd.DataFrame(index=PROTEINS))
    measured = pd.DataFrame(clr, index=names, columns=PROTEINS)
    return rna, measured, adt


def _title_r(ax) -> float:
    return float(ax.get_title().split("Pearson r = ")[1])


def test_predicted_modality_one_panel_per_feature_with_pearson(predicted):
    rna, measured, _ = predicted
    fig = pl.predicted_modality(rna, measured, ncols=2, show=False)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 3 and len(fig.axes) == 4  # 2 x 2 grid, the last one hidden
    pred = rna.obsm["scmognn_adt"]
    for ax, protein in zip(visible, PROTEINS, strict=True):
        assert ax.get_title().startswith(protein)
        expected = np.corrcoef(measured[protein], pred[protein])[0, 1]
        assert _title_r(ax) == pytest.approx(expected, abs=1e-3)
        xy = ax.collections[0].get_offsets()
        np.testing.assert_allclose(xy[:, 0], measured[protein], rtol=1e-6)
        np.testing.assert_allclose(xy[:, 1], pred[protein], rtol=1e-6)
    assert _title_r(visible[0]) > _title_r(visible[1]) > _title_r(visible[2])


def test_predicted_modality_normalises_measured_counts_like_the_prediction(predicted):
    rna, measured, adt = predicted
    # the AnnData of counts is CLR-normalised (the recorded target kind) and reordered by name
    fig = pl.predicted_modality(rna, adt[::-1].copy(), features=["CD19", "CD3"], show=False)
    assert [ax.get_title().split("\n")[0] for ax in fig.axes] == ["CD19", "CD3"]
    xy = fig.axes[1].collections[0].get_offsets()
    np.testing.assert_allclose(xy[:, 0], measured["CD3"], rtol=1e-5)
    # another normalisation changes the measured axis
    fig = pl.predicted_modality(rna, adt, features=["CD3"], target_kind="rna", show=False)
    assert not np.allclose(fig.axes[0].collections[0].get_offsets()[:, 0], measured["CD3"])


def test_predicted_modality_errors(predicted):
    rna, measured, adt = predicted
    with pytest.raises(KeyError, match="CD8"):
        pl.predicted_modality(rna, measured, features=["CD8"], show=False)
    with pytest.raises(KeyError, match="obsm has no key 'other'"):
        pl.predicted_modality(rna, measured, key="other", show=False)
    with pytest.raises(ValueError, match="rows"):
        pl.predicted_modality(rna, measured.iloc[:10], show=False)
    with pytest.raises(KeyError, match="lacks 50 of the 60"):
        pl.predicted_modality(rna, adt[:10].copy(), show=False)
    empty = AnnData(np.zeros((3, 1), dtype=np.float32))
    with pytest.raises(KeyError, match="no predict_modality run"):
        pl.predicted_modality(empty, measured, show=False)


def _matching(n: int = 40) -> tuple[AnnData, sp.csr_matrix]:
    rng = np.random.default_rng(2)
    P = rng.random((n, n)) ** 8
    P[np.arange(n), np.arange(n)] += np.linspace(0.0, 5.0, n)  # later cells matched better
    P /= P.sum(1, keepdims=True)
    adata = AnnData(np.zeros((n, 1), dtype=np.float32))
    adata.obs["cell_type"] = np.where(np.arange(n) < n // 2, "early", "late")
    adata.obsm["scmognn_matching"] = sp.csr_matrix(P)
    _record(adata, "match_modalities", "scmognn_matching", "scmognn")
    return adata, sp.csr_matrix(P)


def test_matching_histogram_and_score():
    adata, P = _matching()
    fig = pl.matching(adata, show=False)
    ax = fig.axes[0]
    heights = np.array([patch.get_height() for patch in ax.patches])
    assert heights.sum() == adata.n_obs
    expected = np.histogram(P.diagonal(), bins=np.linspace(0, 1, 21))[0]
    np.testing.assert_array_equal(heights, expected)
    score = metrics.matching_score(P, np.arange(adata.n_obs))
    assert f"matching score {score:.4f}" in ax.get_title()
    assert "chance 0.0250" in ax.get_title()


def test_matching_groupby_bars_and_partner_order():
    adata, P = _matching()
    fig = pl.matching(adata, groupby="cell_type", show=False)
    bars = {
        t.get_text(): p.get_height()
        for t, p in zip(fig.axes[0].get_xticklabels(), fig.axes[0].patches, strict=True)
    }
    diag = P.diagonal()
    assert bars["late"] == pytest.approx(diag[20:].mean())
    assert bars["early"] == pytest.approx(diag[:20].mean())
    assert list(bars) == ["late", "early"]  # best group first
    # a shuffled partner order: the probability of column truth[i]
    truth = np.roll(np.arange(adata.n_obs), 1)
    fig = pl.matching(adata, truth=truth, show=False)
    score = metrics.matching_score(P, truth)
    assert f"matching score {score:.4f}" in fig.axes[0].get_title()


def test_matching_errors():
    adata, _ = _matching()
    with pytest.raises(KeyError, match="groupby='nope'"):
        pl.matching(adata, groupby="nope", show=False)
    with pytest.raises(ValueError, match="entries"):
        pl.matching(adata, truth=np.arange(5), show=False)
    adata.obsm["wide"] = sp.csr_matrix((adata.n_obs, adata.n_obs + 1))
    with pytest.raises(ValueError, match="pass `truth`"):
        pl.matching(adata, key="wide", show=False)
