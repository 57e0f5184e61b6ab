"""ExpressionTransformer: binning, tokens and masks, the decoder, training, save/load, corpus."""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from anndata import AnnData

import scfound as sf
from scfound.models.exprformer import ExpressionTransformerModule
from scfound.models.exprformer._model import BUCKET_RATIO, VOCABULARY_FILE

TINY = {"n_hidden": 16, "n_layers": 1, "n_heads": 2}


def _counts(n_cells=120, n_genes=30, seed=0, prefix="g"):
    """Counts from three cell programs, so masked values are predictable from the others."""
    rng = np.random.default_rng(seed)
    programs = rng.gamma(0.6, 2.0, size=(3, n_genes))
    kind = rng.integers(0, 3, n_cells)
    depth = rng.uniform(0.5, 2.0, n_cells)[:, None]
    X = rng.poisson(programs[kind] * depth * 3).astype(np.float32)
    X[:, 0] += 1  # every cell has a non-zero gene
    adata = AnnData(
        sp.csr_matrix(X),
        obs=pd.DataFrame({"kind": kind.astype(str)}, index=[f"c{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=[f"{prefix}{j}" for j in range(n_genes)]),
    )
    adata.layers["counts"] = adata.X.copy()
    return adata


def _module(n_vars=6, **kwargs):
    return ExpressionTransformerModule(
        n_vocab=n_vars, input_genes=torch.arange(n_vars), **{**TINY, **kwargs}
    ).eval()


def test_bins_are_relative_to_the_cells_maximum():
    module = _module(n_bins=50)
    values = torch.tensor([[0.1, 2.5, 4.99, 5.0], [0.5, 1.0, 0.0, 0.0]])
    bins = module.bin_values(values, torch.tensor([5.0, 1.0]))
    assert bins.tolist() == [[1, 25, 49, 49], [25, 49, 0, 0]]


def test_tokens_are_the_non_zero_genes_padded_to_the_longest_cell():
    module = _module()
    x = torch.tensor([[0, 3, 0, 1, 0, 0], [2, 2, 1, 5, 0, 1], [0, 0, 0, 0, 7, 0.0]])
    out = module.tokenize(x)
    assert out["valid"].shape == (3, 5)  # padded to the longest cell (5), not to max_tokens
    assert out["valid"].sum(1).tolist() == [2, 5, 1]
    for i in range(3):
        cols = set(out["columns"][i][out["valid"][i]].tolist())
        assert cols == set(torch.nonzero(x[i]).ravel().tolist())
    assert not out["masked"].any()  # nothing masked unless asked
    # at inference the most expressed genes come first and the maximum is the cell's largest value
    assert out["columns"][1, 0].item() == 3
    assert torch.allclose(out["cell_max"], out["values"].max(1).values)


def test_training_masks_a_fraction_of_each_cells_genes_never_all():
    module = _module(n_vars=20, mask_rate=0.3)
    x = torch.zeros(3, 20)
    x[0, :10] = 1.0  # 10 genes: 3 masked
    x[1, :2] = 1.0  # 2 genes: 1 masked (at least one, at most all but one)
    x[2, 5] = 1.0  # 1 gene: nothing to predict it from, nothing masked
    out = module.tokenize(x, mask=True)
    assert out["masked"].sum(1).tolist() == [3, 1, 0]
    assert not (out["masked"] & ~out["valid"]).any()


def test_long_cells_keep_max_tokens_genes_the_most_expressed_at_inference():
    module = _module(n_vars=10, max_tokens=4)
    x = torch.arange(1, 11, dtype=torch.float32)[None, :]
    out = module.tokenize(x)
    assert out["valid"].shape == (1, 4)
    assert set(out["columns"][0].tolist()) == {6, 7, 8, 9}


def test_the_decoder_reads_values_of_observed_genes_only():
    torch.manual_seed(0)
    module = _module(n_vars=8)
    x = torch.tensor([[1.0, 2, 3, 4, 5, 0, 0, 0], [3.0, 1, 0, 0, 0, 0, 0, 0]])
    out = module.inference(x, mask=False)
    masked = torch.zeros_like(out["valid"])
    masked[0, 1] = masked[1, 0] = True
    args = {k: out[k] for k in ("h", "valid", "cell_max")}
    base = module.generative(bins=out["bins"], masked=masked, **args)["prediction"]
    assert base.shape == out["valid"].shape
    # the bins of masked genes and of padding do not change any prediction
    bins = out["bins"].clone()
    bins[masked | ~out["valid"]] = 7
    same = module.generative(bins=bins, masked=masked, **args)["prediction"]
    assert torch.allclose(base[masked], same[masked])
    # the bins of observed genes do
    bins = out["bins"].clone()
    bins[out["valid"] & ~masked] = 3
    other = module.generative(bins=bins, masked=masked, **args)["prediction"]
    assert not torch.allclose(base[masked], other[masked])
    assert (base > 0).all()  # softplus


def test_the_without_decoder_ablation_has_the_same_outputs():
    module = _module(n_vars=8, decoder="encoder")
    x = torch.tensor([[1.0, 2, 3, 4, 5, 0, 0, 0]])
    out = module({"X": x}, loss_kwargs={}, inference_kwargs={"mask": True}, compute_loss=True)[2]
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="decoder must be one of"):
        _module(decoder="mlp")


@pytest.fixture(scope="module")
def trained():
    adata = _counts()
    sf.ExpressionTransformer.setup_anndata(adata, layer="counts")
    torch.manual_seed(0)
    model = sf.ExpressionTransformer(adata, **TINY, batch_size=32)
    # 25 epochs left the imputation level with the cell mean (MAE 0.806 vs 0.806); 50 give 0.62
    model.train(max_epochs=50, lr=5e-3, train_size=0.8, seed=0, enable_progress_bar=False)
    return adata, model


def test_training_lowers_the_masked_error(trained):
    _, model = trained
    train = model.history["masked_mse_train"].to_numpy().ravel()
    valid = model.history["masked_mse_validation"].to_numpy().ravel()
    assert train[-3:].mean() < 0.6 * train[:3].mean()
    assert valid[-3:].mean() < 0.6 * valid[:3].mean()


def test_training_moves_the_gene_table_and_the_encoder():
    # scvi-tools' default Adam eps (0.01) left both all but frozen (relative change ~1e-3)
    adata = _counts()
    sf.ExpressionTransformer.setup_anndata(adata, layer="counts")
    torch.manual_seed(0)
    model = sf.ExpressionTransformer(adata, **TINY, batch_size=32)
    table = model.get_gene_embeddings().to_numpy()
    qkv = model.module.encoder[0].qkv.weight.detach().clone()
    model.train(max_epochs=5, lr=1e-3, train_size=1.0, seed=0, enable_progress_bar=False)
    change = model.get_gene_embeddings().to_numpy() - table
    assert np.sqrt((change**2).mean() / (table**2).mean()) > 0.1
    moved = model.module.encoder[0].qkv.weight.detach().cpu() - qkv.cpu()
    assert moved.norm() / qkv.norm() > 0.01


def test_the_decoder_loss_reaches_the_encoder_at_initialisation():
    # with the expression-bin table initialised as small as the gene table (std 0.02) the
    # decoder's values were ~50x too small: on 1,000 genes the encoder's gradient was 1e-5 of
    # the head's, the gene table did not move in pre-training and masked values were predicted
    # from the cell maximum alone
    rng = np.random.default_rng(0)
    counts = rng.negative_binomial(1, 0.7, size=(128, 1000)).astype(np.float32)
    adata = AnnData(sp.csr_matrix(counts), var=pd.DataFrame(index=[f"g{i}" for i in range(1000)]))
    sf.ExpressionTransformer.setup_anndata(adata, layer=None)
    torch.manual_seed(0)
    module = sf.ExpressionTransformer(adata, preset="small").module
    batch = module.tokenize(torch.from_numpy(counts), mask=True)
    h = module.encode(batch["tokens"], batch["valid"])
    out = module.generative(h, batch["bins"], batch["valid"], batch["masked"], batch["cell_max"])
    ((out["prediction"] - batch["values"]) ** 2)[batch["masked"]].mean().backward()

    def grad_norm(prefix: str) -> float:
        grads = [p.grad.ravel() for n, p in module.named_parameters() if n.startswith(prefix)]
        return float(torch.cat(grads).norm())

    assert grad_norm("encoder.") > 1e-4 * grad_norm("head.")


def test_outputs_have_documented_shapes(trained):
    adata, model = trained
    z = model.get_latent_representation()
    assert z.shape == (adata.n_obs, 16) and np.isfinite(z).all()
    genes = model.get_gene_embeddings()
    assert list(genes.index) == list(adata.var_names) and genes.shape == (adata.n_vars, 16)
    np.testing.assert_array_equal(
        genes.to_numpy(), model.module.gene_embedding.weight.detach().cpu().numpy()
    )
    denoised = model.get_denoised_expression()
    nonzero = adata.layers["counts"].toarray() > 0
    assert np.isfinite(denoised[nonzero]).all() and np.isnan(denoised[~nonzero]).all()


def test_dropped_values_are_imputed_better_than_the_cell_mean(trained):
    adata, model = trained
    counts = adata.layers["counts"].toarray()
    rng = np.random.default_rng(1)
    query = (counts > 0) & (rng.random(counts.shape) < 0.15)
    query[:, 0] = False  # keep a non-zero gene in every cell
    dropped = adata.copy()
    dropped.layers["counts"] = sp.csr_matrix(np.where(query, 0, counts))
    predicted = model.get_denoised_expression(dropped, query=query)
    assert np.isfinite(predicted[query]).all() and np.isnan(predicted[~query]).all()
    truth = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    seen = np.log1p(dropped.layers["counts"].toarray() / counts.sum(1, keepdims=True) * 1e4)
    cell_mean = np.nanmean(np.where(seen > 0, seen, np.nan), axis=1, keepdims=True)
    model_mae = np.abs(predicted - truth)[query].mean()
    mean_mae = np.abs(np.broadcast_to(cell_mean, truth.shape) - truth)[query].mean()
    assert model_mae < mean_mae


def test_length_buckets_keep_similar_cells_together(trained):
    adata, model = trained
    codes = model._group_codes()
    lengths = (adata.layers["counts"].toarray() > 0).sum(1)
    for code in np.unique(codes):
        members = lengths[codes == code]
        assert members.max() <= members.min() * BUCKET_RATIO
    assert len(np.unique(codes)) > 1


def test_save_load_keeps_the_vocabulary_and_weights(trained, tmp_path):
    adata, model = trained
    model.save(str(tmp_path / "m"))
    vocabulary = (tmp_path / "m" / VOCABULARY_FILE).read_text().split()
    assert vocabulary == list(adata.var_names)
    fresh = _counts()
    loaded = sf.ExpressionTransformer.load(str(tmp_path / "m"), fresh)
    assert loaded.vocabulary == model.vocabulary
    pd.testing.assert_frame_equal(loaded.get_gene_embeddings(), model.get_gene_embeddings())
    np.testing.assert_allclose(
        loaded.get_latent_representation(), model.get_latent_representation(fresh), atol=1e-5
    )


def test_unknown_genes_are_nan_with_a_warning_and_all_unknown_is_an_error(trained):
    _, model = trained
    with pytest.warns(UserWarning, match="2 of 4 genes are not in the model's vocabulary"):
        frame = model.get_gene_embeddings(["g1", "nope", "g3", "other"])
    assert frame.loc[["nope", "other"]].isna().all().all()
    assert frame.loc[["g1", "g3"]].notna().all().all()
    with pytest.raises(ValueError, match="none of the 2 genes is in the model's vocabulary"):
        model.get_gene_embeddings(["x", "y"])


def test_embed_genes_writes_varm_nan_for_unknown_genes(trained):
    _, model = trained
    query = _counts(40, 10, seed=3)
    query.var_names = [f"g{j}" for j in range(8)] + ["new1", "new2"]
    before = query.copy()
    with pytest.warns(UserWarning, match="2 of 10 genes"):
        sf.tl.embed_genes(query, model=model, layer="counts")
    emb = query.varm["X_exprformer"]
    assert emb.shape == (10, 16)
    assert np.isnan(emb[8:]).all() and np.isfinite(emb[:8]).all()
    np.testing.assert_allclose(emb[:8], model.get_gene_embeddings().loc[query.var_names[:8]])
    assert set(query.uns["scfound"]) == {"embed_genes"}
    assert set(query.varm) == {"X_exprformer"} and set(query.obsm) == set(before.obsm)
    renamed = query.copy()
    renamed.var_names = [f"x{j}" for j in range(10)]
    with pytest.raises(ValueError, match="none of the 10 genes"):
        sf.tl.embed_genes(renamed, model=model, layer="counts", key_added="again")
    assert "again" not in renamed.varm


def test_denoise_imputes_the_entries_of_a_query_layer(trained):
    adata, model = trained
    data = adata[:, :].copy()
    sf.pp.mask_entries(data, layer="counts", fraction=0.15, seed=0)
    sf.tl.denoise(data, "exprformer", model=model, layer="heldout_counts", query_layer="heldout")
    out = data.layers["exprformer_denoised"]
    mask = data.layers["heldout"]
    assert np.isfinite(out).all() and (out[mask] > 0).all()
    observed = (
        data.layers["heldout_counts"].toarray()
        if sp.issparse(data.layers["heldout_counts"])
        else np.asarray(data.layers["heldout_counts"])
    )
    assert (out[(observed == 0) & ~mask] == 0).all()


def test_corpus_of_different_gene_panels(tmp_path):
    a = _counts(60, 20, seed=1)
    b = _counts(50, 20, seed=2)
    b.var_names = [f"g{j}" for j in range(10, 30)]  # 10 shared genes, 10 of its own
    corpus = sf.pp.build_corpus({"a": a, "b": b}, layer="counts")
    sf.ExpressionTransformer.setup_anndata(corpus, layer=None)
    model = sf.ExpressionTransformer(corpus, **TINY)
    assert model.vocabulary == [f"g{j}" for j in range(30)]
    x = torch.from_numpy(corpus.X.toarray())
    out = model.module.tokenize(x)
    columns = [set(out["columns"][i][out["valid"][i]].tolist()) for i in range(corpus.n_obs)]
    from_a = (corpus.obs["dataset"] == "a").to_numpy()
    assert all(c <= set(range(20)) for c, is_a in zip(columns, from_a, strict=True) if is_a)
    assert all(c <= set(range(10, 30)) for c, is_a in zip(columns, from_a, strict=True) if not is_a)
    model.train(max_epochs=1, enable_progress_bar=False)
    assert np.isfinite(model.get_latent_representation()).all()
    # a query on one panel is carried over by name
    query = _counts(20, 20, seed=4)
    sf.ExpressionTransformer.setup_anndata(query)
    carried = sf.ExpressionTransformer.from_model(model, query)
    assert carried.get_latent_representation().shape == (20, 16)


def test_gene_key_matches_other_identifiers():
    adata = _counts(30, 10)
    adata.var["symbol"] = [f"S{j}" for j in range(10)]
    sf.ExpressionTransformer.setup_anndata(adata, gene_key="symbol")
    model = sf.ExpressionTransformer(adata, **TINY)
    assert model.vocabulary == [f"S{j}" for j in range(10)]
    model.is_trained_ = True  # weights as initialised are enough to check the mapping
    # another object with other var_names is matched through its own symbol column
    query = _counts(20, 10, seed=2, prefix="ENSG")
    query.var["symbol"] = [f"S{j}" for j in range(9, -1, -1)]
    sf.ExpressionTransformer.setup_anndata(query, gene_key="symbol")
    carried = sf.ExpressionTransformer.from_model(model, query)
    assert carried.module.input_genes.tolist() == list(range(9, -1, -1))
    sf.tl.embed_genes(query, model=model, gene_key="symbol", layer="counts")
    expected = model.get_gene_embeddings().loc[query.var["symbol"]].to_numpy()
    np.testing.assert_allclose(query.varm["X_exprformer"], expected)
    with pytest.raises(KeyError, match="gene_key='nope'"):
        sf.ExpressionTransformer.setup_anndata(_counts(30, 10), gene_key="nope")


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ("nan", "NaN or infinite"),
        ("negative", "negative values"),
        ("empty_cell", "1 cells of adata.layers\\['counts'\\] have no non-zero value"),
        ("duplicated", "duplicate"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(bad, match):
    adata = _counts(30, 10)
    counts = adata.layers["counts"].toarray()
    if bad == "nan":
        counts[0, 0] = np.nan
    elif bad == "negative":
        counts[1, 1] = -1
    elif bad == "empty_cell":
        counts[2] = 0
    else:
        adata.var_names = ["a"] * 2 + [f"g{j}" for j in range(8)]
    adata.layers["counts"] = counts
    before = (list(adata.obs.columns), list(adata.var.columns), set(adata.uns), counts.copy())
    with pytest.raises(ValueError, match=match):
        sf.ExpressionTransformer.setup_anndata(adata, layer="counts")
    after = (list(adata.obs.columns), list(adata.var.columns), set(adata.uns))
    assert after == before[:3]
    np.testing.assert_array_equal(adata.layers["counts"], before[3])


def test_untrained_model_refuses_inference():
    adata = _counts(30, 10)
    sf.ExpressionTransformer.setup_anndata(adata)
    model = sf.ExpressionTransformer(adata, **TINY)
    with pytest.raises(RuntimeError, match="not trained"):
        model.get_latent_representation()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model.get_gene_embeddings().shape == (10, 16)  # the table exists untrained


def _pairs(n_genes=60, n_pairs=400, seed=0):
    """Gene embeddings in which a pair is positive when its genes share a hidden group."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 4, n_genes)
    centres = rng.normal(size=(4, 8)) * 3
    emb = pd.DataFrame(
        centres[group] + rng.normal(size=(n_genes, 8)), index=[f"G{i}" for i in range(n_genes)]
    )
    a, b = rng.integers(0, n_genes, (2, n_pairs))
    pairs = pd.DataFrame(
        {"gene1": emb.index[a], "gene2": emb.index[b], "label": (group[a] == group[b]).astype(int)}
    )
    return emb, pairs


@pytest.mark.parametrize("split", ["random", "gene_disjoint"])
def test_gene_pair_auc_separates_informative_from_random_embeddings(split):
    emb, pairs = _pairs()
    good = sf.metrics.gene_pair_auc(emb, pairs, split=split)
    noise = pd.DataFrame(np.random.default_rng(1).normal(size=emb.shape), index=emb.index)
    bad = sf.metrics.gene_pair_auc(noise, pairs, split=split)
    assert good["auc"] > 0.8 and bad["auc"] < 0.7 and good["coverage"] == 1.0
    if split == "gene_disjoint":  # pairs across the two gene sets are in neither part
        assert good["n_train"] + good["n_test"] < len(pairs)


def test_gene_pair_auc_counts_coverage_and_uses_given_test_pairs():
    emb, pairs = _pairs()
    emb.iloc[:6] = np.nan  # unknown genes
    train, test = pairs.iloc[:300], pairs.iloc[300:]
    out = sf.metrics.gene_pair_auc(emb, train, test_pairs=test)
    known = ~(pairs["gene1"].isin(emb.index[:6]) | pairs["gene2"].isin(emb.index[:6]))
    assert out["coverage"] == pytest.approx(known.mean())
    assert out["n_test"] == int(known.iloc[300:].sum())
    with pytest.raises(KeyError, match="label"):
        sf.metrics.gene_pair_auc(emb, pairs.drop(columns="label"))


def test_backed_anndata_streams_from_disk(tmp_path):
    adata = _counts(40, 12)
    del adata.layers["counts"]  # counts in .X, which a backed AnnData keeps on disk
    adata.write_h5ad(tmp_path / "x.h5ad")
    backed = ad.read_h5ad(tmp_path / "x.h5ad", backed="r")
    sf.ExpressionTransformer.setup_anndata(backed, layer=None)
    model = sf.ExpressionTransformer(backed, **TINY, batch_size=16)
    model.train(max_epochs=1, enable_progress_bar=False)
    assert backed.isbacked and np.isfinite(model.get_latent_representation()).all()
    in_memory = _counts(40, 12)
    sf.ExpressionTransformer.setup_anndata(in_memory)
    np.testing.assert_array_equal(
        model._group_codes(), sf.ExpressionTransformer(in_memory, **TINY)._group_codes()
    )
