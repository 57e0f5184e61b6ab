"""ScMoGNN: graph construction, prediction head, save/load, the tl verb and its errors."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from anndata import AnnData
from mudata import MuData

import scfound as sf
from conftest import assert_unchanged, fingerprint
from scfound.models.scmognn import ScMoGNN, normalize_counts
from scfound.models.scmognn._graph import cosine_neighbors, gene_set_mask, read_gmt
from scfound.models.scmognn._module import bipartite_graph, sparse_matmul

DATA = "/work/shared/data/pbmc10k_cite.h5mu"
TINY = {"n_hidden": 16, "n_layers": 2}
MODALITIES = {"rna_layer": "rna", "protein_layer": "adt"}


def synthetic_cite(n_cells: int = 300, n_genes: int = 40, n_proteins: int = 6, seed: int = 0):
    """Paired RNA and protein counts driven by the same cell types."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 4, n_cells)
    programme = rng.gamma(1.0, 1.0, (4, n_genes))
    depth = rng.lognormal(0, 0.3, n_cells)[:, None]
    rna = rng.poisson(programme[types] * depth * 2).astype(np.float32)
    loading = rng.normal(0, 1, (n_genes, n_proteins)) / np.sqrt(n_genes)
    level = np.log1p(programme[types]) @ loading
    prot = rng.poisson(20 * np.exp(2 * level)).astype(np.float32)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(types.astype(str))},
        index=[f"cell{i}" for i in range(n_cells)],
    )
    genes = pd.DataFrame(index=[f"G{i}" for i in range(n_genes)])
    proteins = pd.DataFrame(index=[f"P{i}" for i in range(n_proteins)])
    a = AnnData(sp.csr_matrix(rna), obs=obs.copy(), var=genes)
    b = AnnData(prot, obs=obs.copy(), var=proteins)
    a.layers["counts"], b.layers["counts"] = a.X.copy(), b.X.copy()
    return MuData({"rna": a, "adt": b})


def _split(mdata: MuData, frac: float = 0.25, seed: int = 0) -> tuple[MuData, MuData]:
    test = np.random.default_rng(seed).random(mdata.n_obs) < frac
    return mdata[~test].copy(), mdata[test].copy()


def _clr(adt: AnnData) -> np.ndarray:
    counts = adt.layers["counts"]
    counts = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    return normalize_counts(torch.as_tensor(counts), "clr").numpy()


@pytest.fixture(scope="module")
def trained():
    """A reference, a query and a ScMoGNN trained on the reference (30 epochs)."""
    reference, query = _split(synthetic_cite())
    ScMoGNN.setup_mudata(
        reference, rna_layer="counts", protein_layer="counts", modalities=MODALITIES
    )
    model = ScMoGNN(reference, **TINY)
    model.train(max_epochs=30, batch_size=32, enable_progress_bar=False)
    return reference, query, model


# ------------------------------------------------------------------ normalisation and graphs
def test_normalisations_match_their_definitions():
    x = torch.tensor([[0.0, 1.0, 3.0], [2.0, 0.0, 6.0]])
    lognorm = np.log1p(x.numpy() / x.numpy().sum(1, keepdims=True) * 1e4)
    np.testing.assert_allclose(normalize_counts(x, "log1p_cp10k"), lognorm, rtol=1e-5)
    g = np.exp(np.log1p(x.numpy()).mean(1, keepdims=True))
    np.testing.assert_allclose(normalize_counts(x, "clr"), np.log1p(x.numpy() / g), rtol=1e-5)
    idf = torch.tensor([1.0, 2.0, 0.5])
    tfidf = np.log1p(x.numpy() / x.numpy().sum(1, keepdims=True) * idf.numpy() * 1e4)
    np.testing.assert_allclose(normalize_counts(x, "tfidf", idf), tfidf, rtol=1e-5)
    np.testing.assert_array_equal(normalize_counts(x, "binary"), (x > 0).float())
    with pytest.raises(ValueError, match="unknown normalisation 'zscore'"):
        normalize_counts(x, "zscore")


def test_bipartite_graph_is_the_weighted_mean_in_both_directions():
    rng = np.random.default_rng(0)
    A = (rng.random((6, 9)) < 0.4) * rng.random((6, 9))
    A = torch.as_tensor(A, dtype=torch.float64)
    index = A.nonzero().T
    graph = bipartite_graph(index, A[index[0], index[1]], 6, 9)
    x = torch.randn(9, 3, dtype=torch.float64)
    deg_c = (A > 0).sum(1, keepdim=True).clamp_min(1)
    np.testing.assert_allclose(graph.to_cell @ x, (A / deg_c) @ x, rtol=1e-10)
    y = torch.randn(6, 3, dtype=torch.float64)
    deg_f = (A > 0).sum(0, keepdim=True).clamp_min(1)
    np.testing.assert_allclose(graph.to_feature @ y, (A / deg_f).T @ y, rtol=1e-10)
    # the transposes used for gradients are the transposes
    np.testing.assert_allclose(graph.to_cell_t.to_dense(), graph.to_cell.to_dense().T)
    np.testing.assert_allclose(graph.to_feature_t.to_dense(), graph.to_feature.to_dense().T)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v: sparse_matmul(graph.to_cell, graph.to_cell_t, v), (x,)
    )


def test_cosine_neighbours_respect_threshold_gene_sets_and_width():
    rng = np.random.default_rng(1)
    base = rng.random((50, 1))
    X = np.hstack([base, base * 2, base + 0.01 * rng.random((50, 1)), rng.random((50, 3))])
    index, weight = cosine_neighbors(X, max_neighbors=2, threshold=0.99)
    assert index.shape == weight.shape == (6, 2)
    assert set(index[0][weight[0] > 0]) == {1, 2}  # the three copies find each other
    assert (weight[weight > 0] > 0.99).all() and not (index[index > 0] == 0).any()
    assert (weight[3:] == 0).all()  # independent columns: no neighbour above 0.99
    sets = {"S1": ["g0", "g1"], "S2": ["G4", "unknown"]}
    mask, covered = gene_set_mask(sets, ["g0", "g1", "g2", "g3", "g4", "g5"])
    assert covered == 3 and mask.nnz == 2  # g4 alone in its set after matching by upper case
    index, weight = cosine_neighbors(X, max_neighbors=2, threshold=0.5, allowed=mask)
    assert set(index[0][weight[0] > 0]) == {1} and (weight[2:] == 0).all()


def test_read_gmt(tmp_path):
    path = tmp_path / "sets.gmt"
    path.write_text("SET_A\tdesc\tG1\tG2\tG3\nSET_B\thttp://x\tG4\n")
    assert read_gmt(path) == {"SET_A": ["G1", "G2", "G3"], "SET_B": ["G4"]}
    path.write_text("onlyname\n")
    with pytest.raises(ValueError, match="line 1"):
        read_gmt(path)


def test_gene_set_graph_from_a_gmt_file(tmp_path):
    mdata = synthetic_cite(120)
    path = tmp_path / "sets.gmt"
    path.write_text("A\t-\t" + "\t".join(f"G{i}" for i in range(10)) + "\n")
    ScMoGNN.setup_mudata(mdata, rna_layer="counts", protein_layer="counts", modalities=MODALITIES)
    model = ScMoGNN(mdata, feature_graph=str(path), feature_graph_threshold=0.0, **TINY)
    index = model.module.neighbor_index.numpy()
    linked = model.module.neighbor_weight.numpy() > 0
    assert linked[:10].any() and not linked[10:].any()
    assert (index[linked] < 10).all()
    assert model.feature_graph_["source"].endswith("sets.gmt")
    with pytest.raises(ValueError, match="links no two"):
        ScMoGNN(mdata, feature_graph={"X": ["nothing", "here"]}, **TINY)
    no_graph = ScMoGNN(mdata, feature_graph=None, **TINY)
    assert no_graph.module.neighbor_weight.shape[1] == 0


# ------------------------------------------------------------------ model
def test_training_lowers_the_held_out_error(trained):
    reference, query, model = trained
    truth = _clr(query.mod["adt"])
    error = np.sqrt(np.mean((model.predict(query.mod["rna"], layer="counts").values - truth) ** 2))
    untrained = ScMoGNN(reference, **TINY)
    untrained.is_trained_ = True
    before = untrained.predict(query.mod["rna"], layer="counts").values
    error_before = np.sqrt(np.mean((before - truth) ** 2))
    mean = _clr(reference.mod["adt"]).mean(0)
    error_mean = np.sqrt(np.mean((mean - truth) ** 2))
    assert error < 0.7 * error_before
    assert error < error_mean
    assert (
        model.history["validation_loss"].iloc[-1, 0] < model.history["validation_loss"].iloc[0, 0]
    )


def test_prediction_frame_and_embedding(trained):
    reference, query, model = trained
    pred = model.predict(query.mod["rna"], layer="counts")
    assert list(pred.columns) == list(reference.mod["adt"].var_names)
    assert pred.index.equals(query.obs_names) and (pred.values >= 0).all()
    z = model.get_latent_representation(query.mod["rna"], layer="counts")
    assert z.shape == (query.n_obs, TINY["n_hidden"])
    # a cell's prediction does not depend on the other query cells
    one = model.predict(query.mod["rna"][:3].copy(), layer="counts")
    np.testing.assert_allclose(one.values, pred.values[:3], rtol=1e-4, atol=1e-5)


def test_query_features_are_matched_by_name(trained):
    _, query, model = trained
    rna = query.mod["rna"]
    pred = model.predict(rna, layer="counts")
    shuffled = rna[:, np.random.default_rng(0).permutation(rna.n_vars)].copy()
    np.testing.assert_allclose(
        model.predict(shuffled, layer="counts").values, pred.values, rtol=1e-4, atol=1e-5
    )
    with pytest.warns(UserWarning, match="has 30 of the model's 40 rna features"):
        model.predict(rna[:, :30].copy(), layer="counts")
    renamed = rna.copy()
    renamed.var_names = [f"X{i}" for i in range(rna.n_vars)]
    with pytest.raises(ValueError, match="none of the model's 40 rna features"):
        model.predict(renamed, layer="counts")


def test_save_load_round_trip(trained, tmp_path):
    reference, query, model = trained
    model.save(tmp_path / "m", overwrite=True)
    loaded = ScMoGNN.load(tmp_path / "m", reference)
    np.testing.assert_allclose(
        loaded.predict(query.mod["rna"], layer="counts").values,
        model.predict(query.mod["rna"], layer="counts").values,
        rtol=1e-5,
        atol=1e-6,
    )
    assert loaded.source == "rna" and loaded.target == "protein"


def test_model_errors():
    mdata = synthetic_cite(60)
    ScMoGNN.setup_mudata(mdata, rna_layer="counts", modalities={"rna_layer": "rna"})
    with pytest.raises(ValueError, match="target='protein' is not registered"):
        ScMoGNN(mdata)
    ScMoGNN.setup_mudata(mdata, rna_layer="counts", protein_layer="counts", modalities=MODALITIES)
    with pytest.raises(ValueError, match="source and target must differ"):
        ScMoGNN(mdata, source="rna", target="rna")
    bad = synthetic_cite(60)
    bad.mod["adt"].layers["counts"][0, 0] = np.nan
    with pytest.raises(ValueError, match="adt"):
        ScMoGNN.setup_mudata(bad, rna_layer="counts", protein_layer="counts", modalities=MODALITIES)
    with pytest.raises(KeyError, match="no modality 'protein'"):
        ScMoGNN.setup_mudata(
            synthetic_cite(60), modalities={"rna_layer": "rna", "protein_layer": "protein"}
        )


@pytest.mark.parametrize(("source", "target"), [("adt", "rna"), ("rna", "atac"), ("atac", "rna")])
def test_other_directions(source, target):
    cite = synthetic_cite(120)
    atac = cite.mod["adt"].copy()  # stand-in peaks: counts over 6 features
    atac.var_names = [f"chr1:{i}-{i + 1}" for i in range(atac.n_vars)]
    mdata = MuData({"rna": cite.mod["rna"], "adt": cite.mod["adt"], "atac": atac})
    query = mdata.mod[source].copy()
    sf.tl.predict_modality(
        query,
        mdata,
        source=source,
        target=target,
        layer="counts",
        reference_layer="counts",
        max_epochs=2,
        model_kwargs=TINY,
        train_kwargs={"enable_progress_bar": False},
    )
    pred = query.obsm[f"scmognn_{target}"]
    assert pred.shape == (120, mdata.mod[target].n_vars) and (pred.values >= 0).all()
    record = query.uns["scfound"]["predict_modality"][f"scmognn_{target}"]
    assert record["source_kind"] == {"adt": "protein"}.get(source, source)


def test_training_steps_are_sampled_subgraphs_of_the_batch(monkeypatch):
    """Each training step builds the graph of its minibatch only, never of all cells."""
    mdata = synthetic_cite(200)
    ScMoGNN.setup_mudata(mdata, rna_layer="counts", protein_layer="counts", modalities=MODALITIES)
    model = ScMoGNN(mdata, **TINY)
    sizes = []
    propagate = model.module.propagate

    def recording(index, value, n_cells, cell_features=None):
        sizes.append((n_cells, int(index[0].max()) + 1))
        return propagate(index, value, n_cells, cell_features)

    monkeypatch.setattr(model.module, "propagate", recording)
    model.train(max_epochs=2, batch_size=32, train_size=0.8, enable_progress_bar=False)
    n_train = 160
    assert len(sizes) >= 2 * -(-n_train // 32)  # one graph per step (and validation steps)
    assert max(n for n, _ in sizes) <= 32
    assert all(top <= n for n, top in sizes)


def test_reference_feature_states_in_chunks_equal_the_full_graph():
    """The chunked pass over the reference (inference) gives the full graph's feature states."""
    mdata = synthetic_cite(150)
    ScMoGNN.setup_mudata(mdata, rna_layer="counts", protein_layer="counts", modalities=MODALITIES)
    module = ScMoGNN(mdata, n_hidden=16, n_layers=3).module.eval()
    X = sp.csr_matrix(mdata.mod["rna"].layers["counts"])
    x = torch.as_tensor(X.toarray())
    with torch.no_grad():
        index, value = module.edges(x)
        _, full = module.propagate(index, value, len(x), module.cell_features(x))
        chunked = module.propagate_in_chunks(
            lambda: (torch.as_tensor(X[s : s + 40].toarray()) for s in range(0, X.shape[0], 40))
        )
    assert len(chunked) == 3
    for a, b in zip(full, chunked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # the states are means over all the cells: leaving cells out changes them
    with torch.no_grad():
        partial = module.propagate_in_chunks(lambda: iter([x[:100]]))
    assert not torch.allclose(partial[1], full[1], atol=1e-4)


def test_synthetic_multiome_pairs_two_predictable_modalities():
    cite = sf.datasets.synthetic_multiome(300, 50, 8, kind="protein", n_batches=2, seed=3)
    assert set(cite.mod) == {"rna", "adt"} and cite.mod["adt"].shape == (300, 8)
    assert (cite.mod["rna"].obs_names == cite.mod["adt"].obs_names).all()
    assert set(cite.obs["batch"]) == {"b0", "b1"} and cite.obs["cell_type"].nunique() > 1
    rna = cite.mod["rna"].layers["counts"]
    assert sp.issparse(rna) and np.allclose(rna.data, np.round(rna.data)) and rna.min() >= 0
    again = sf.datasets.synthetic_multiome(300, 50, 8, kind="protein", n_batches=2, seed=3)
    assert (again.mod["rna"].X != cite.mod["rna"].X).nnz == 0
    # the proteins follow the cell types: type means differ far more than within-type noise
    clr = _clr(cite.mod["adt"])
    types = cite.obs["cell_type"].to_numpy()
    means = pd.DataFrame(clr).groupby(types).mean()
    assert means.var(0).mean() > 0.1 * clr.var(0).mean()
    multiome = sf.datasets.synthetic_multiome(200, 30, 400, kind="atac", n_types=4, seed=0)
    peaks = multiome.mod["atac"].layers["counts"]
    assert sp.issparse(peaks) and set(np.unique(peaks.data)) <= {1.0, 2.0}
    open_frac = pd.DataFrame((peaks > 0).toarray()).groupby(multiome.obs["cell_type"].to_numpy())
    assert open_frac.mean().to_numpy().max() > 3 * open_frac.mean().to_numpy().min()
    with pytest.raises(ValueError, match="kind"):
        sf.datasets.synthetic_multiome(10, 5, 2, kind="rna")
    with pytest.raises(ValueError, match="n_cells"):
        sf.datasets.synthetic_multiome(0, 5, 2)


# ------------------------------------------------------------------ tl verb and metrics
def test_predict_modality_writes_only_its_keys(trained):
    reference, query, _ = trained
    reference = synthetic_cite()  # a fresh object, never set up
    ref_before = fingerprint(reference)
    rna = query.mod["rna"].copy()
    before = fingerprint(rna)
    model = sf.tl.predict_modality(
        rna,
        reference,
        source="rna",
        target="adt",
        layer="counts",
        reference_layer="counts",
        max_epochs=3,
        model_kwargs=TINY,
        train_kwargs={"enable_progress_bar": False},
        return_model=True,
    )
    pred = rna.obsm["scmognn_adt"]
    assert isinstance(pred, pd.DataFrame) and pred.shape == (rna.n_obs, 6)
    assert list(pred.columns) == list(reference.mod["adt"].var_names)
    record = rna.uns["scfound"]["predict_modality"]["scmognn_adt"]
    assert record["method"] == "scmognn" and record["target_kind"] == "protein"
    del rna.obsm["scmognn_adt"], rna.uns["scfound"]
    assert_unchanged(rna, before)
    assert_unchanged(reference, ref_before)
    # a MuData query is written at its source modality; a given model is reused
    q = query.copy()
    sf.tl.predict_modality(q, reference, layer="counts", model=model)
    assert "scmognn_adt" in q.mod["rna"].obsm
    with pytest.raises(ValueError, match="predicts protein from rna, not rna from protein"):
        sf.tl.predict_modality(
            query.mod["adt"].copy(), reference, source="adt", target="rna", model=model
        )


def test_predict_modality_errors():
    reference = synthetic_cite(80)
    rna = reference.mod["rna"].copy()
    kwargs = {"layer": "counts", "reference_layer": "counts", "max_epochs": 1}
    with pytest.raises(KeyError, match="target='protein': modality not found"):
        sf.tl.predict_modality(rna, reference, target="protein", **kwargs)
    with pytest.raises(TypeError, match="reference must be a MuData"):
        sf.tl.predict_modality(rna, reference.mod["adt"], **kwargs)
    unpaired = MuData({"rna": reference.mod["rna"][:70].copy(), "adt": reference.mod["adt"]})
    with pytest.raises(ValueError, match="are not paired"):
        sf.tl.predict_modality(rna, unpaired, **kwargs)
    with pytest.raises(ValueError, match="cannot tell what modality 'foo' measures"):
        other = MuData({"rna": reference.mod["rna"], "foo": reference.mod["adt"]})
        sf.tl.predict_modality(rna, other, target="foo", **kwargs)
    with pytest.raises(ValueError, match=r"method 'stai' does not support tl\.predict_modality"):
        sf.tl.predict_modality(rna, reference, "stai", **kwargs)
    with pytest.raises(TypeError, match="unknown option"):
        sf.tl.predict_modality(rna, reference, n_neighbours=3, **kwargs)
    negative = rna.copy()
    negative.layers["counts"] = negative.layers["counts"].copy()
    negative.layers["counts"][0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        sf.tl.predict_modality(negative, reference, **kwargs)
    assert "scmognn_adt" not in rna.obsm


def test_modality_prediction_scores():
    rng = np.random.default_rng(0)
    y = rng.random((50, 4))
    perfect = sf.metrics.modality_prediction_scores(y, y)
    assert perfect["rmse"] == 0 and perfect["pearson"] == pytest.approx(1.0)
    assert perfect["spearman"] == pytest.approx(1.0)
    noisy = sf.metrics.modality_prediction_scores(y, y + rng.normal(0, 0.5, y.shape))
    assert 0 < noisy["pearson"] < 1 and noisy["rmse"] == pytest.approx(0.5, rel=0.2)
    shifted = sf.metrics.modality_prediction_scores(y, y + 1)
    assert shifted["rmse"] == pytest.approx(1.0) and shifted["mae"] == pytest.approx(1.0)
    assert shifted["pearson"] == pytest.approx(1.0) and shifted["pearson_cell"] == pytest.approx(1)
    assert np.isnan(sf.metrics.modality_prediction_scores(y, np.ones_like(y))["pearson"])
    with pytest.raises(ValueError, match="same cells x features"):
        sf.metrics.modality_prediction_scores(y, y[:, :3])


def test_seed_ensemble_averages_its_models():
    reference, query = _split(synthetic_cite(160))
    rna = query.mod["rna"].copy()
    kwargs = {"layer": "counts", "reference_layer": "counts", "model_kwargs": TINY}
    kwargs["train_kwargs"] = {"enable_progress_bar": False, "batch_size": 32}
    models = sf.tl.predict_modality(
        rna, reference, max_epochs=3, n_models=2, return_model=True, **kwargs
    )
    assert isinstance(models, list) and len(models) == 2
    one, two = (m.predict(rna, layer="counts").to_numpy() for m in models)
    assert not np.allclose(one, two)  # seeds 0 and 1
    np.testing.assert_allclose(rna.obsm["scmognn_adt"].to_numpy(), (one + two) / 2, rtol=1e-5)
    assert rna.uns["scfound"]["predict_modality"]["scmognn_adt"]["n_models"] == 2
    sf.tl.predict_modality(rna, reference, model=models, key_added="again", layer="counts")
    np.testing.assert_allclose(rna.obsm["again"], rna.obsm["scmognn_adt"], rtol=1e-6)
    with pytest.raises(ValueError, match="n_models must be a positive integer"):
        sf.tl.predict_modality(rna, reference, n_models=0, key_added="x", **kwargs)
    with pytest.raises(ValueError, match="empty list"):
        sf.tl.predict_modality(rna, reference, model=[], key_added="x", layer="counts")


# ------------------------------------------------------------------ cell features and labels
def test_initial_cell_features_are_the_standardised_svd_of_the_source(trained):
    reference, _, model = trained
    module = model.module
    assert module.n_cell_features == 39  # 50 asked, capped at min(cells, genes) - 1
    x = torch.as_tensor(reference.mod["rna"].layers["counts"].toarray())
    x_on_module = x.to(next(module.parameters()).device)  # trained on a GPU where there is one
    with torch.inference_mode():
        features = module.cell_features(x_on_module).cpu().numpy()
    np.testing.assert_allclose(features.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(features.std(0), 1, atol=1e-3)
    # the cells' initial states depend on them; without them all cells start alike
    with torch.inference_mode():
        _, c0 = module._initial_states(x.shape[0], module.cell_features(x_on_module))
    assert c0.std(0).mean() > 0
    ScMoGNN.setup_mudata(
        reference, rna_layer="counts", protein_layer="counts", modalities=MODALITIES
    )
    plain = ScMoGNN(reference, **TINY, n_cell_features=0)
    assert plain.module.cell_input is None and plain.module.cell_features(x) is None


def test_labels_add_a_classification_head_to_the_loss():
    mdata = synthetic_cite(120)
    mdata.obs["cell_type"] = mdata.mod["rna"].obs["cell_type"].to_numpy()
    ScMoGNN.setup_mudata(
        mdata,
        rna_layer="counts",
        protein_layer="counts",
        labels_key="cell_type",
        modalities=MODALITIES,
    )
    model = ScMoGNN(mdata, **TINY)
    assert model.module.classifier.out_features == 4
    tensors = {
        "rna": torch.as_tensor(mdata.mod["rna"].layers["counts"].toarray()),
        "protein": torch.as_tensor(mdata.mod["adt"].layers["counts"]),
        "labels": torch.as_tensor(mdata.obs["cell_type"].astype(int).to_numpy()[:, None]),
    }
    module = model.module
    keys = {"rna": module.source_key, "protein": module.target_key, "labels": module.labels_key}
    tensors = {keys[k]: v for k, v in tensors.items()}
    out = module.inference(tensors[module.source_key])
    loss = module.loss(tensors, out, {})
    mse = loss.reconstruction_loss["reconstruction_loss"].mean()
    ce = loss.extra_metrics["label_cross_entropy"]
    assert ce > 0 and torch.isclose(loss.loss, mse + ce)
    model.train(max_epochs=20, batch_size=32, enable_progress_bar=False)
    module.cpu()  # trained on a GPU where there is one; the tensors above are on the CPU
    with torch.inference_mode():
        trained_ce = module.loss(tensors, module.inference(tensors[module.source_key]), {})
    assert trained_ce.extra_metrics["label_cross_entropy"] < 0.5 * ce


# ------------------------------------------------------------------ joint embedding
def test_embed_writes_the_joint_embedding_into_the_mudata():
    mdata = synthetic_cite(200)
    mdata.obs["cell_type"] = mdata.mod["rna"].obs["cell_type"].to_numpy()
    before = {name: fingerprint(mod) for name, mod in mdata.mod.items()}
    had = set(mdata.obsm)
    kwargs = {"layer": "counts", "max_epochs": 20, "model_kwargs": TINY}
    kwargs["train_kwargs"] = {"enable_progress_bar": False, "batch_size": 64}
    model = sf.tl.embed(mdata, "scmognn", labels_key="cell_type", return_model=True, **kwargs)
    assert set(mdata.obsm) - had == {"X_scmognn"}
    z = mdata.obsm["X_scmognn"]
    assert z.shape == (200, TINY["n_hidden"]) and np.isfinite(z).all()
    np.testing.assert_allclose(z, model.get_latent_representation(mdata.mod["rna"], layer="counts"))
    record = mdata.uns["scfound"]["embed"]["X_scmognn"]
    assert (record["source"], record["target"], record["labels_key"]) == ("rna", "adt", "cell_type")
    for name, mod in mdata.mod.items():
        assert_unchanged(mod, before[name])
    # supervised by the labels, the cell types separate in the embedding
    labels = mdata.obs["cell_type"].to_numpy()
    from sklearn.metrics import silhouette_score

    assert silhouette_score(z, labels) > 0.3


def test_embed_errors():
    mdata = synthetic_cite(60)
    kwargs = {"layer": "counts", "max_epochs": 1, "model_kwargs": TINY}
    with pytest.raises(TypeError, match="embeds the paired modalities of a MuData"):
        sf.tl.embed(mdata.mod["rna"].copy(), "scmognn", **kwargs)
    with pytest.raises(KeyError, match="labels_key='nope'"):
        sf.tl.embed(mdata, "scmognn", labels_key="nope", **kwargs)
    mdata.obs["cell_type"] = mdata.mod["rna"].obs["cell_type"].astype(object).to_numpy()
    mdata.obs.iloc[0, mdata.obs.columns.get_loc("cell_type")] = np.nan
    with pytest.raises(ValueError, match="1 cell\\(s\\) have no label"):
        sf.tl.embed(mdata, "scmognn", labels_key="cell_type", **kwargs)
    three = MuData({**dict(mdata.mod), "atac": mdata.mod["adt"].copy()})  # names shared
    with pytest.raises(ValueError, match="pass source= and target="):
        sf.tl.embed(three, "scmognn", **kwargs)
    assert "X_scmognn" not in mdata.obsm and "scfound" not in mdata.uns


# ------------------------------------------------------------------ modality matching
def test_soft_matching_is_the_truncated_row_softmax():
    from scfound.tl._methods._matching import soft_matching

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(7, 3))
    P = soft_matching(a, b, scale=2.0).toarray()
    d2 = ((a[:, None] - b[None]) ** 2).sum(-1)
    expected = np.exp(-d2 / 2.0)
    np.testing.assert_allclose(P, expected / expected.sum(1, keepdims=True), rtol=1e-5)
    top = soft_matching(a, b, scale=2.0, top_k=2)
    assert (np.diff(top.indptr) == 2).all()
    np.testing.assert_allclose(np.asarray(top.sum(1)).ravel(), 1, rtol=1e-5)
    # batch-wise: no mass across batches
    ba, bb = np.array(["x", "x", "y", "y", "y"]), np.array(["x"] * 3 + ["y"] * 4)
    P = soft_matching(a, b, scale=2.0, batches=(ba, bb)).toarray()
    assert P[:2, 3:].sum() == 0 and P[2:, :3].sum() == 0
    with pytest.raises(ValueError, match="batch 'z' has 1 cell"):
        soft_matching(a, b, scale=1.0, batches=(np.array(["x"] * 4 + ["z"]), bb))
    # Hungarian: a permutation of the same points is recovered exactly
    perm = rng.permutation(5)
    P = soft_matching(a, a[perm], scale=50.0, hungarian=True).toarray()
    np.testing.assert_array_equal(P.argmax(1), np.argsort(perm))
    assert set(np.unique(P)) == {0.0, 1.0}


def test_matching_score():
    P = np.array([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75]])
    assert sf.metrics.matching_score(P, np.array([0, 2])) == pytest.approx(0.625)
    assert sf.metrics.matching_score(sp.csr_matrix(P), np.array([1, -1])) == pytest.approx(0.25)
    T = np.array([[1, 0, 0], [0, 0, 1]])
    assert sf.metrics.matching_score(P, T) == pytest.approx(0.625)
    with pytest.raises(ValueError, match="2 rows"):
        sf.metrics.matching_score(P, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"lie in \[-1, 2\]"):
        sf.metrics.matching_score(P, np.array([0, 3]))
    with pytest.raises(ValueError, match="non-negative"):
        sf.metrics.matching_score(-P, np.array([0, 1]))


def test_match_modalities_writes_probabilities_and_best_matches(trained):
    reference, query, model = trained
    rna = query.mod["rna"].copy()
    perm = np.random.default_rng(1).permutation(query.n_obs)
    adt = query.mod["adt"][perm].copy()
    adt_before, rna_before = fingerprint(adt), fingerprint(rna)
    kwargs = {"layer": "counts", "other_layer": "counts", "model": model}
    sf.tl.match_modalities(rna, adt, reference, **kwargs)
    P = rna.obsm["scmognn_matching"]
    assert sp.issparse(P) and P.shape == (rna.n_obs, adt.n_obs)
    np.testing.assert_allclose(np.asarray(P.sum(1)).ravel(), 1, rtol=1e-5)
    best = adt.obs_names[np.asarray(P.argmax(1)).ravel()]
    assert (rna.obs["scmognn_match"].to_numpy() == best).all()
    truth = np.argsort(perm)
    score = sf.metrics.matching_score(P, truth)
    assert score > 2.0 / adt.n_obs  # better than chance (cell types are matched)
    assert_unchanged(adt, adt_before)
    new = set(rna.obsm) - set(rna_before["obsm"]), set(rna.obs) - set(rna_before["obs"])
    assert new == ({"scmognn_matching"}, {"scmognn_match"})
    # top_k, batch-wise and Hungarian options
    sf.tl.match_modalities(rna, adt, reference, top_k=3, key_added="top3", **kwargs)
    assert np.diff(rna.obsm["top3_matching"].indptr).max() == 3
    rna.obs["b"] = np.where(np.arange(rna.n_obs) % 2 == 0, "s1", "s2")
    adt.obs["b"] = rna.obs["b"].to_numpy()[truth]
    sf.tl.match_modalities(rna, adt, reference, batch_key="b", key_added="bw", **kwargs)
    P = rna.obsm["bw_matching"].tocoo()
    assert (rna.obs["b"].to_numpy()[P.row] == adt.obs["b"].to_numpy()[P.col]).all()
    assert sf.metrics.matching_score(rna.obsm["bw_matching"], truth) >= score
    sf.tl.match_modalities(rna, adt, reference, hungarian=True, key_added="hu", **kwargs)
    H = rna.obsm["hu_matching"]
    assert H.nnz == rna.n_obs and len(np.unique(H.indices)) == rna.n_obs
    assert set(rna.uns["scfound"]["match_modalities"]) == {"scmognn", "top3", "bw", "hu"}


def test_match_modalities_errors(trained):
    reference, query, model = trained
    rna, adt = query.mod["rna"].copy(), query.mod["adt"].copy()
    kwargs = {"layer": "counts", "other_layer": "counts", "model": model}
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        sf.tl.match_modalities(rna, adt, reference, top_k=0, **kwargs)
    with pytest.raises(KeyError, match=r"batch_key='b' is not a column of adata\.obs"):
        sf.tl.match_modalities(rna, adt, reference, batch_key="b", **kwargs)
    with pytest.raises(ValueError, match="`other` lacks 2 of the model's 6 target features"):
        sf.tl.match_modalities(rna, adt[:, :4].copy(), reference, **kwargs)
    with pytest.raises(KeyError, match="target='protein': modality not found"):
        sf.tl.match_modalities(rna, adt, reference, target="protein", **kwargs)
    with pytest.raises(TypeError, match="unknown option"):
        sf.tl.match_modalities(rna, adt, reference, nope=1, **kwargs)
    assert "scmognn_matching" not in rna.obsm and "scfound" not in rna.uns


# ------------------------------------------------------------------ real data
@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(DATA), reason="shared data not available")
def test_pbmc10k_protein_prediction_beats_the_mean():
    import mudata

    cite = mudata.read_h5mu(DATA)
    test = np.random.default_rng(0).random(cite.n_obs) < 0.2
    reference, query = cite[~test].copy(), cite[test].copy()
    rna = query.mod["rna"].copy()
    model = sf.tl.predict_modality(
        rna,
        reference,
        layer="counts",
        reference_layer="counts",
        max_epochs=10,
        model_kwargs={"n_hidden": 32, "n_layers": 2},
        train_kwargs={"enable_progress_bar": False, "batch_size": 256, "lr": 1e-2},
        return_model=True,
    )
    truth = _clr(query.mod["adt"])
    scores = sf.metrics.modality_prediction_scores(truth, rna.obsm["scmognn_adt"])
    mean = np.broadcast_to(_clr(reference.mod["adt"]).mean(0), truth.shape)
    baseline = sf.metrics.modality_prediction_scores(truth, mean)
    assert scores["rmse"] < 0.8 * baseline["rmse"]
    assert scores["pearson"] > 0.6
    # matching the held-out cells' RNA to their shuffled proteins, with the same model
    order = np.random.default_rng(0).permutation(query.n_obs)
    adt = query.mod["adt"][order].copy()
    sf.tl.match_modalities(rna, adt, reference, model=model, layer="counts", other_layer="counts")
    score = sf.metrics.matching_score(rna.obsm["scmognn_matching"], np.argsort(order))
    assert score > 5.0 / query.n_obs
