"""ScMoFormer: prior graphs, encodes links, positional encodings, training, save/load, tl verb."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import scfound as sf
from conftest import assert_unchanged, fingerprint
from scfound.models.scmoformer import ScMoFormer
from scfound.models.scmoformer._graph import (
    encodes_links,
    padded_table,
    prior_graph,
    read_edge_list,
    table_edges,
)
from scfound.models.scmoformer._model import _positional
from scfound.models.scmoformer._module import table_graph
from test_scmognn import _clr, _split, synthetic_cite

DATA = "/work/shared/data/pbmc10k_cite.h5mu"
STRING = "/work/shared/data/gene_pairs/string_v11.5_bmmc_adt_ppi.tsv"
TINY = {"n_hidden": 16, "n_heads": 2, "n_layers": 2, "n_cell_features": 8}
MODALITIES = {"rna_layer": "rna", "protein_layer": "adt"}
GENES = ["CD4", "IL7R", "FCGR3A", "CD3E", "CD3D"]
PROTEINS = ["CD4", "CD127", "CD16", "P3", "P4", "P5"]


def named_cite(n_cells: int = 300, seed: int = 0):
    """Synthetic CITE-seq whose first genes and proteins carry real symbols (3 links)."""
    mdata = synthetic_cite(n_cells, 40, 6, seed=seed)
    mdata.mod["rna"].var_names = GENES + [f"G{i}" for i in range(35)]
    mdata.mod["adt"].var_names = PROTEINS
    mdata.update()
    return mdata


def _setup(mdata):
    ScMoFormer.setup_mudata(
        mdata, rna_layer="counts", protein_layer="counts", modalities=MODALITIES
    )


def _rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred - truth) ** 2)))


@pytest.fixture(scope="module")
def trained():
    """A reference, a query of unseen cells and a ScMoFormer trained on the reference."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        reference, query = _split(named_cite())
        _setup(reference)
        torch.manual_seed(0)
        model = ScMoFormer(reference, **TINY)
        model.train(max_epochs=25, batch_size=64, enable_progress_bar=False)
    return reference, query, model


# ------------------------------------------------------------------ graphs
def test_encodes_links_match_symbols_aliases_and_barcoded_names():
    genes = ["CD4", "IL7R", "FCGR3A", "CD3E", "CD3D", "cd8a", "TIGIT"]
    proteins = ["CD4", "CD127", "CD16", "CD3_AGGATCGA", "CD8a", "Blank", "TIGIT"]
    index, weight, unmatched = encodes_links(proteins, genes)
    linked = {proteins[p]: sorted(genes[g] for g in index[p][weight[p] > 0]) for p in range(7)}
    assert linked == {
        "CD4": ["CD4"],
        "CD127": ["IL7R"],
        "CD16": ["FCGR3A"],
        "CD3_AGGATCGA": ["CD3D", "CD3E"],
        "CD8a": ["cd8a"],
        "Blank": [],
        "TIGIT": ["TIGIT"],
    }
    assert unmatched == ["Blank"]
    # a user mapping overrides the built-in aliases
    index, weight, unmatched = encodes_links(["CD16", "Blank"], genes, {"Blank": ["TIGIT"]})
    assert genes[index[1][weight[1] > 0][0]] == "TIGIT" and unmatched == []


def test_padded_table_keeps_the_heaviest_edges_and_is_symmetric_from_edge_lists():
    rows, cols = np.array([0, 0, 0, 1, 2, 2]), np.array([1, 2, 3, 1, 0, 0])
    w = np.array([0.2, 0.9, 0.5, 1.0, 0.3, 0.7], dtype=np.float32)
    index, weight = padded_table(rows, cols, w, 4, 2)
    assert index[0].tolist() == [2, 3] and weight[0].tolist() == pytest.approx([0.9, 0.5])
    assert (weight[1] == 0).all()  # the self-loop is dropped
    assert index[2, 0] == 0 and weight[2, 0] == pytest.approx(0.7)  # duplicates keep the max
    graph = table_graph(torch.as_tensor(index), torch.as_tensor(weight), 4)
    x = torch.eye(4)
    expected = np.zeros((4, 4), dtype=np.float32)
    expected[0, 2], expected[0, 3], expected[2, 0] = 0.9 / 2, 0.5 / 2, 0.7
    np.testing.assert_allclose((graph.to_cell @ x).numpy(), expected, rtol=1e-6)


def test_string_edge_list_reads_known_pairs_with_weights():
    names = ["CD40", "CD154", "CD274", "CD279", "CD4", "NOT_IN_STRING"]
    with pytest.warns(UserWarning, match=r"5 of the data's 6 features are in it"):
        rows, cols, weights, what = read_edge_list(STRING, names, "protein_graph")
    pairs = {(names[a], names[b]): w for a, b, w in zip(rows, cols, weights, strict=True)}
    for a, b in (("CD40", "CD154"), ("CD274", "CD279")):
        assert pairs[(a, b)] == pairs[(b, a)] > 0.9
    assert "string_v11.5" in what and ((weights > 0) & (weights <= 1)).all()


def test_malformed_edge_lists_are_refused(tmp_path):
    names = ["A", "B", "C"]
    cases = {
        "one_column.tsv": ("protein1\nA\nB\n", "needs two columns"),
        "nan.tsv": ("p1\tp2\tscore\nA\tB\t\nB\tC\t0.5\n", "finite numeric"),
        "text.tsv": ("p1\tp2\tscore\nA\tB\thigh\n", "finite numeric"),
        "negative.tsv": ("p1\tp2\tscore\nA\tB\t-0.5\n", "negative weight"),
        "unknown.tsv": ("p1\tp2\nX\tY\n", "none of its 2 names"),
    }
    for file, (text, message) in cases.items():
        path = tmp_path / file
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_edge_list(path, names, "gene_graph")
    with pytest.raises(FileNotFoundError, match="gene_graph="):
        read_edge_list(tmp_path / "missing.tsv", names, "gene_graph")
    frame = pd.DataFrame({"a": ["A", "B"], "b": ["B", "C"]})  # no weights: 1
    _, weight, what = prior_graph(frame, names, None, 2, 0.0, "gene_graph")
    assert weight[1][weight[1] > 0].tolist() == [1.0, 1.0] and what.startswith("edge list")
    with pytest.raises(TypeError, match="gene_graph must be"):
        prior_graph(3, names, None, 2, 0.0, "gene_graph")


def test_gene_sets_link_only_members(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.random((50, 5)) + rng.random((50, 1))  # all positively correlated
    path = tmp_path / "sets.gmt"
    path.write_text("S\t-\tg0\tg1\tg2\n")
    with pytest.warns(UserWarning, match="covers 3 of the 5"):
        index, weight, what = prior_graph(
            str(path), [f"g{i}" for i in range(5)], values, 4, 0.0, "x"
        )
    edges = table_edges(index, weight)
    assert set(map(tuple, edges.T)) == {(a, b) for a in range(3) for b in range(3) if a != b}
    assert "sets.gmt" in what


# ------------------------------------------------------------------ positional encodings
def test_random_walk_and_laplacian_encodings_of_a_cycle():
    n = 6  # a 6-cycle plus an isolated node (index 6)
    rows = np.r_[np.arange(n), (np.arange(n) + 1) % n]
    cols = np.r_[(np.arange(n) + 1) % n, np.arange(n)]
    index, weight = padded_table(rows, cols, np.ones(2 * n, np.float32), n + 1, 2)
    rw = _positional(index, weight, "rwpe", 4).numpy()
    # return probabilities of a walk on a cycle: 0, 1/2, 0, 3/8
    np.testing.assert_allclose(rw[:n], np.tile([0, 0.5, 0, 0.375], (n, 1)), atol=1e-6)
    assert (rw[n] == 0).all()
    lap = _positional(index, weight, "lappe", 3).numpy()
    assert (lap[n] == 0).all() and np.abs(lap[:n]).sum() > 0
    # non-trivial eigenvectors of the cycle sum to 0 over its nodes
    np.testing.assert_allclose(lap[:n].sum(0), 0, atol=1e-5)


# ------------------------------------------------------------------ model
def test_graphs_of_the_model(trained):
    _, _, model = trained
    graphs = model.graphs_
    assert graphs["encodes_links"]["n_links"] == 3
    assert graphs["encodes_links"]["unmatched_proteins"] == ["P3", "P4", "P5"]
    assert graphs["gene_graph"]["source"] == "co-expression" and graphs["gene_graph"]["n_edges"]
    assert model.module.gene_pe.abs().sum() > 0  # RWPE by default


def test_training_lowers_the_held_out_error(trained):
    reference, query, model = trained
    truth = _clr(query.mod["adt"])
    error = _rmse(model.predict(query.mod["rna"], layer="counts").values, truth)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.manual_seed(0)
        untrained = ScMoFormer(reference, **TINY)
    untrained.is_trained_ = True
    before = _rmse(untrained.predict(query.mod["rna"], layer="counts").values, truth)
    mean = _rmse(_clr(reference.mod["adt"]).mean(0), truth)
    assert error < 0.7 * before and error < 0.85 * mean
    loss = model.history["validation_loss"].iloc[:, 0]
    assert loss.min() < 0.5 * loss.iloc[0]


def test_predictions_of_unseen_cells_do_not_depend_on_each_other(trained):
    reference, query, model = trained
    pred = model.predict(query.mod["rna"], layer="counts")
    assert list(pred.columns) == PROTEINS and pred.index.equals(query.obs_names)
    assert (pred.values >= 0).all() and np.isfinite(pred.values).all()
    one = model.predict(query.mod["rna"][:3].copy(), layer="counts", batch_size=2)
    np.testing.assert_allclose(one.values, pred.values[:3], rtol=1e-4, atol=1e-5)
    # genes matched by name
    rna = query.mod["rna"]
    shuffled = rna[:, np.random.default_rng(0).permutation(rna.n_vars)].copy()
    np.testing.assert_allclose(
        model.predict(shuffled, layer="counts").values, pred.values, rtol=1e-4, atol=1e-5
    )
    assert model.predict().shape == (reference.n_obs, len(PROTEINS))


def test_save_load_round_trip(trained, tmp_path):
    reference, query, model = trained
    model.save(str(tmp_path / "m"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        loaded = ScMoFormer.load(str(tmp_path / "m"), reference)
    assert loaded.n_context_ == model.n_context_ == 64
    np.testing.assert_allclose(
        loaded.predict(query.mod["rna"], layer="counts").values,
        model.predict(query.mod["rna"], layer="counts").values,
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("pe", ["none", "lappe"])
def test_options_and_prior_graph_files(pe, tmp_path):
    mdata = named_cite(120)
    _setup(mdata)
    edges = tmp_path / "ppi.tsv"
    edges.write_text("a\tb\tscore\nCD4\tCD127\t0.9\nCD16\tP3\t0.4\nCD4\tNOPE\t0.2\n")
    with pytest.warns(UserWarning, match="3 of the 6 proteins have no encoding gene"):
        model = ScMoFormer(
            mdata, positional_encoding=pe, gene_graph=None, protein_graph=edges, **TINY
        )
    assert model.graphs_["gene_graph"]["n_edges"] == 0
    assert model.graphs_["protein_graph"]["n_edges"] == 4
    assert (model.module.protein_pe.abs().sum() > 0) == (pe != "none")
    model.train(max_epochs=1, batch_size=32, enable_progress_bar=False)
    pred = model.predict(mdata.mod["rna"], layer="counts")
    assert pred.shape == (120, 6)
    model.save(str(tmp_path / "m"))  # the path of the prior graph is kept as text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        loaded = ScMoFormer.load(str(tmp_path / "m"), mdata)
    assert loaded.init_params_["non_kwargs"]["protein_graph"] == str(edges)
    np.testing.assert_allclose(loaded.predict(mdata.mod["rna"], layer="counts"), pred, rtol=1e-5)


def test_bad_input_is_refused_and_changes_nothing(tmp_path):
    mdata = named_cite(60)
    _setup(mdata)
    before = fingerprint(mdata)
    with pytest.raises(ValueError, match="positional_encoding must be one of"):
        ScMoFormer(mdata, positional_encoding="sinusoid")
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\tscore\nCD4\tCD127\tnan\n")
    with pytest.raises(ValueError, match=r"protein_graph .* finite numeric"):
        ScMoFormer(mdata, protein_graph=str(bad), **TINY)
    unknown = tmp_path / "unknown.tsv"
    unknown.write_text("a\tb\nX1\tX2\n")
    with pytest.raises(ValueError, match=r"gene_graph .* none of its 2 names"):
        ScMoFormer(mdata, gene_graph=str(unknown), **TINY)
    assert_unchanged(mdata, before)
    nolinks = named_cite(60)
    nolinks.mod["adt"].var_names = [f"Q{i}" for i in range(6)]
    nolinks.update()
    _setup(nolinks)
    with pytest.raises(ValueError, match=r"none of the 6 proteins .* matches a gene symbol"):
        ScMoFormer(nolinks, **TINY)
    rna_only = named_cite(60)
    with pytest.raises(ValueError, match="protein"):
        ScMoFormer.setup_mudata(rna_only, rna_layer="counts", modalities={"rna_layer": "rna"})


def test_predict_modality_writes_only_its_key(trained):
    _, query, model = trained
    reference = named_cite()  # never set up
    ref_before = fingerprint(reference)
    rna = query.mod["rna"].copy()
    before = fingerprint(rna)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sf.tl.predict_modality(
            rna,
            reference,
            method="scmoformer",
            layer="counts",
            reference_layer="counts",
            max_epochs=2,
            model_kwargs=TINY,
            train_kwargs={"enable_progress_bar": False, "batch_size": 64},
        )
    pred = rna.obsm["scmoformer_adt"]
    assert isinstance(pred, pd.DataFrame) and list(pred.columns) == PROTEINS
    record = rna.uns["scfound"]["predict_modality"]["scmoformer_adt"]
    assert record["method"] == "scmoformer" and record["target_kind"] == "protein"
    del rna.obsm["scmoformer_adt"], rna.uns["scfound"]
    assert_unchanged(rna, before)
    assert_unchanged(reference, ref_before)
    q = query.mod["rna"].copy()
    sf.tl.predict_modality(q, reference, method="scmoformer", layer="counts", model=model)
    np.testing.assert_allclose(
        q.obsm["scmoformer_adt"].values, model.predict(q, layer="counts").values, rtol=1e-5
    )
    with pytest.raises(ValueError, match="predicts proteins from RNA"):
        sf.tl.predict_modality(
            query.mod["adt"].copy(), reference, "scmoformer", source="adt", target="rna"
        )
    with pytest.raises(TypeError, match="must be a trained ScMoFormer"):
        sf.tl.predict_modality(q, reference, "scmoformer", layer="counts", model="x", key_added="k")
    assert "k" not in q.obsm


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(DATA), reason="real data not available")
def test_pbmc_cite_proteins_beat_the_mean():
    """On 1,500 PBMC CITE-seq cells (1,000 genes), held-out proteins beat the training mean."""
    import mudata

    cite = mudata.read_h5mu(DATA)
    rng = np.random.default_rng(0)
    cells = np.sort(rng.choice(cite.n_obs, 1500, replace=False))
    rna = cite.mod["rna"][cells]
    variable = np.argsort(-np.asarray(rna.layers["counts"].sum(0)).ravel())[:1000]
    small = mudata.MuData(
        {"rna": rna[:, np.sort(variable)].copy(), "adt": cite.mod["adt"][cells].copy()}
    )
    reference, query = _split(small, 0.2)
    _setup(reference)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.manual_seed(0)
        model = ScMoFormer(reference, n_hidden=32, n_heads=4, n_cell_features=32)
    assert model.graphs_["encodes_links"]["n_links"] >= 5  # CD4, CD14, CD8a, CD16, ...
    model.train(max_epochs=6, batch_size=256, enable_progress_bar=False)
    truth = _clr(query.mod["adt"])
    pred = model.predict(query.mod["rna"], layer="counts").values
    scores = sf.metrics.modality_prediction_scores(truth, pred)
    assert scores["rmse"] < 0.8 * _rmse(_clr(reference.mod["adt"]).mean(0), truth)
    assert scores["pearson"] > 0.6
