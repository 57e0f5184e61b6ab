import json
import os
import re
import subprocess
import sys
import textwrap
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import scfound as sf
from scfound.models.cellplm import export_authors_checkpoint
from scfound.models.cellplm._pretrained import KEY_MAP, to_authors_key, to_scfound_key
from scfound.nn import flow_attention

TINY = {"n_hidden": 16, "n_heads": 2, "n_layers": 2, "n_latent": 8, "n_decoder_hidden": 16}


def _counts(n_cells, genes, seed=0, density=0.4):
    rng = np.random.default_rng(seed)
    X = sp.random(n_cells, len(genes), density=density, format="csr", random_state=rng)
    X.data = np.ceil(X.data * 10).astype(np.float32)
    return ad.AnnData(X.astype(np.float32), var=pd.DataFrame(index=genes))


@pytest.fixture
def corpus(synthetic):
    """Two datasets on overlapping panels: spatial (20 genes) and scRNA-seq (30 genes)."""
    rna = _counts(150, [f"gene_{i}" for i in range(10, 40)], seed=1)
    rna.obs["sample"] = np.repeat(["a", "b", "c"], 50)
    rna.obs["cell_type"] = np.tile(["t0", "t1", "t2"], 50)
    return sf.pp.build_corpus(
        {"spatial": synthetic, "rna": rna},
        layer={"spatial": "counts"},
        group_key={"spatial": "fov", "rna": "sample"},
        keep_obs=("cell_type",),
    )


def _setup(corpus, **kw):
    sf.CellPLM.setup_anndata(
        corpus, group_key="sample", dataset_key="dataset", spatial_key="spatial", **kw
    )
    return corpus


# ------------------------------------------------------------------------------- blocks
def _naive_flow_attention(q, k, v, eps=1e-6):
    """Flowformer equations as written (per head, explicit loops over nothing clever)."""
    q, k = torch.sigmoid(q) + eps, torch.sigmoid(k) + eps
    n, m = q.shape[-2], k.shape[-2]
    incoming = 1 / (q * (k.sum(-2, keepdim=True) - m * eps + eps)).sum(-1)
    outgoing = 1 / (k * (q.sum(-2, keepdim=True) - n * eps + eps)).sum(-1)
    sink = (q * ((k - eps) * outgoing.unsqueeze(-1)).sum(-2, keepdim=True).add(eps)).sum(-1)
    source = (k * ((q - eps) * incoming.unsqueeze(-1)).sum(-2, keepdim=True).add(eps)).sum(-1)
    allocation = torch.sigmoid(sink * n / m)
    competition = torch.softmax(source.clamp(-1, 1), -1) * m
    attn = ((q - eps) * incoming.unsqueeze(-1)) @ (k - eps).transpose(-2, -1)
    return (attn @ (v * competition.unsqueeze(-1))) * allocation.unsqueeze(-1)


def test_flow_attention_matches_equations():
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 50, 8) * 2 for _ in range(3))
    expected = _naive_flow_attention(q, k, v)
    assert torch.allclose(flow_attention(q, k, v), expected, atol=1e-5)


def test_flow_attention_is_permutation_equivariant():
    torch.manual_seed(0)
    layer = sf.nn.FlowformerLayer(16, 2).eval()
    x = torch.randn(30, 16)
    perm = torch.randperm(30)
    assert torch.allclose(layer(x)[perm], layer(x[perm]), atol=1e-5)


def test_key_map_round_trip():
    for authors, _ in KEY_MAP:
        key = authors.format(i="0", p="weight", l="1", qkv="query", norm="norm1", cov="batch")
        ours = to_scfound_key(key)
        assert ours is not None and to_authors_key(ours) == key


# ------------------------------------------------------------------------------ corpus
def test_build_corpus_records_panels(corpus, synthetic):
    measured = corpus.varm["measured"]
    assert corpus.n_vars == 40 and list(measured.columns) == ["spatial", "rna"]
    assert measured["spatial"].sum() == 20 and measured["rna"].sum() == 30
    assert measured.loc["gene_15", "spatial"] and not measured.loc["gene_35", "spatial"]
    # counts land in the right columns, unmeasured genes are zero
    spatial_rows = corpus.obs["dataset"].to_numpy() == "spatial"
    np.testing.assert_array_equal(
        corpus[spatial_rows, synthetic.var_names].X.toarray(),
        synthetic.layers["counts"].toarray()
        if sp.issparse(synthetic.layers["counts"])
        else synthetic.layers["counts"],
    )
    assert corpus[spatial_rows, "gene_35"].X.sum() == 0
    assert np.isnan(corpus.obsm["spatial"][~spatial_rows]).all()


def test_build_corpus_leaves_inputs_untouched():
    a = _counts(30, ["g1", "g2", "g3"], seed=1)
    b = _counts(30, ["g3", "g2", "g4"], seed=2)  # reordered in the union
    before = b.X.copy()
    corpus = sf.pp.build_corpus({"a": a, "b": b})
    assert (b.X != before).nnz == 0
    np.testing.assert_array_equal(corpus[30:, ["g3", "g2", "g4"]].X.toarray(), before.toarray())


def test_mask_covers_measured_genes_only(corpus):
    model = sf.CellPLM(_setup(corpus), **TINY, gene_mask_rate=0.9, cell_mask_rate=0.9)
    module = model.module.train()
    spatial_code = model._dataset_categories().index("spatial")
    codes = torch.full((100,), spatial_code)
    x = torch.ones(100, corpus.n_vars)
    out = module.inference(x, dataset_index=codes)
    measured = corpus.varm["measured"]["spatial"].to_numpy()
    keep = out["keep"]
    hidden = out["hidden"]
    assert hidden.shape == (len(keep), corpus.n_vars)
    assert hidden[:, ~measured].sum() == 0 and hidden[:, measured].sum() > 0


# ---------------------------------------------------------------------- train / save
@pytest.mark.parametrize("likelihood", ["mse", "nb"])
def test_pretrain_save_load_round_trip(corpus, tmp_path, likelihood):
    model = sf.CellPLM(_setup(corpus), **TINY, likelihood=likelihood)
    model.train(max_epochs=2)
    assert np.all(np.isfinite(model.history["train_loss"].to_numpy(dtype=float)))
    z = model.get_latent_representation()
    assert z.shape == (corpus.n_obs, 8) and np.isfinite(z).all()
    np.testing.assert_array_equal(z, model.get_latent_representation())  # deterministic
    denoised = model.get_denoised_expression()
    assert denoised.shape == corpus.shape and np.isfinite(denoised).all()
    # counts: each cell's measured genes add up to its library; unmeasured ones are imputed
    counts = model.get_denoised_expression(scale="counts")
    measured = corpus.varm["measured"][corpus.obs["dataset"].astype(str)].to_numpy().T
    library = np.asarray(corpus.X.sum(1)).ravel()
    np.testing.assert_allclose((counts * measured).sum(1), library, rtol=1e-4)
    assert (counts[~measured] >= 0).all() and (counts[~measured] > 0).any()
    model.save(str(tmp_path / "m"))
    loaded = sf.CellPLM.load(str(tmp_path / "m"), corpus)
    np.testing.assert_allclose(loaded.get_latent_representation(), z, atol=1e-6)
    genes = model.get_gene_embeddings()
    assert list(genes.index) == list(model.vocabulary) and genes.shape[1] == TINY["n_hidden"]
    pd.testing.assert_frame_equal(loaded.get_gene_embeddings(), genes)
    genes.iloc[0, 0] += 1.0  # a copy: editing it leaves the model as it was
    assert model.get_gene_embeddings().iloc[0, 0] != genes.iloc[0, 0]


def test_imputed_expression_is_a_frame_of_the_decoded_genes(corpus):
    model = sf.CellPLM(_setup(corpus), **TINY)
    model.train(max_epochs=1)
    imputed = model.get_imputed_expression()  # default: counts, every decoded gene
    assert isinstance(imputed, pd.DataFrame) and (imputed.dtypes == np.float32).all()
    assert imputed.index.equals(corpus.obs_names) and imputed.columns.equals(corpus.var_names)
    np.testing.assert_array_equal(imputed, model.get_denoised_expression(scale="counts"))
    genes = ["gene_35", "gene_12"]  # one the spatial panel lacks, one both measure
    logged = model.get_imputed_expression(genes=genes, scale="log1p")
    assert list(logged.columns) == genes
    np.testing.assert_array_equal(
        logged, model.get_denoised_expression()[:, corpus.var_names.get_indexer(genes)]
    )
    with pytest.raises(ValueError, match="not in the genes the model decodes"):
        model.get_imputed_expression(genes=["gene_12", "nope"])
    with pytest.raises(ValueError, match="scale must be"):
        model.get_imputed_expression(scale="raw")
    # genes outside the vocabulary are not decoded, hence not a default column
    query = _counts(20, ["gene_12", "gene_13", "other"], seed=3)
    sf.CellPLM.setup_anndata(query)
    zero_shot = sf.CellPLM.from_model(model, query, drop_unknown_genes=True)
    assert list(zero_shot.get_imputed_expression().columns) == ["gene_12", "gene_13"]


def test_sample_key_is_a_deprecated_alias_and_old_saves_load(corpus, synthetic, tmp_path):
    rna = _counts(150, [f"gene_{i}" for i in range(10, 40)], seed=1)
    rna.obs["sample"] = np.repeat(["a", "b", "c"], 50)
    rna.obs["cell_type"] = np.tile(["t0", "t1", "t2"], 50)
    with pytest.warns(FutureWarning, match="sample_key.*deprecated.*group_key"):
        old = sf.pp.build_corpus(
            {"spatial": synthetic, "rna": rna},
            layer={"spatial": "counts"},
            sample_key={"spatial": "fov", "rna": "sample"},
            keep_obs=("cell_type",),
        )
    assert old.obs.equals(corpus.obs) and (old.X != corpus.X).nnz == 0
    with pytest.warns(FutureWarning, match="sample_key.*deprecated.*group_key"):
        sf.CellPLM.setup_anndata(corpus, sample_key="sample", dataset_key="dataset")
    with pytest.raises(ValueError, match="pass `group_key` only"):
        sf.CellPLM.setup_anndata(corpus, group_key="dataset", sample_key="sample")
    model = sf.CellPLM(corpus, **TINY)
    args = model.adata_manager.registry["setup_args"]
    assert args["group_key"] == "sample" and "sample_key" not in args
    assert len(np.unique(model._group_codes())) == 5  # 2 FOVs + 3 samples
    model.train(max_epochs=1)
    model.save(str(tmp_path / "m"))
    # a model saved before the rename has `sample_key` in its registry: it loads, silently
    meta_file = tmp_path / "m" / "model.json"
    meta = json.loads(meta_file.read_text())
    setup_args = meta["registry"]["setup_args"]
    setup_args["sample_key"] = setup_args.pop("group_key")
    meta_file.write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        loaded = sf.CellPLM.load(str(tmp_path / "m"), corpus.copy())
    assert loaded.adata_manager.registry["setup_args"]["group_key"] == "sample"
    np.testing.assert_array_equal(loaded._group_codes(), model._group_codes())
    np.testing.assert_allclose(
        loaded.get_latent_representation(), model.get_latent_representation(), atol=1e-6
    )


def test_pretraining_lowers_masked_error(corpus):
    model = sf.CellPLM(_setup(corpus), **TINY, dropout=0.0)
    torch.manual_seed(0)

    def masked_mse():
        torch.manual_seed(1)
        module = model.module.eval()
        total = 0.0
        for code in np.unique(model._group_codes()):
            cells = np.flatnonzero(model._group_codes() == code)
            x = torch.from_numpy(corpus.X[cells].toarray())
            codes = np.asarray(model.adata_manager.get_from_registry("dataset")).ravel()
            ds = torch.from_numpy(codes[cells])
            inf = module.inference(x, dataset_index=ds)
            gen = module.generative(inf["z"])
            total += float(((gen["px"] - inf["xn"]) ** 2 * inf["hidden"]).sum())
        return total

    before = masked_mse()
    model.train(max_epochs=30, lr=3e-3)
    assert masked_mse() < 0.7 * before


def test_cell_order_and_sample_context(corpus):
    model = sf.CellPLM(_setup(corpus), **TINY)
    model.is_trained_ = True  # random weights are enough to compare cell orders
    z = model.get_latent_representation()
    shuffled = corpus[np.random.default_rng(0).permutation(corpus.n_obs)].copy()
    _setup(shuffled)
    z2 = model.get_latent_representation(shuffled)
    order = corpus.obs_names.get_indexer(shuffled.obs_names)
    np.testing.assert_allclose(z2, z[order], atol=1e-5)


# ------------------------------------------------------------------- transfer / checkpoints
def test_from_model_zero_shot_on_new_panel(corpus):
    model = sf.CellPLM(_setup(corpus), **TINY)
    model.train(max_epochs=1)
    new = _counts(40, [f"gene_{i}" for i in (3, 12, 25, 38)], seed=3)
    sf.CellPLM.setup_anndata(new)
    transferred = sf.CellPLM.from_model(model, new)
    assert transferred.module.use_covariates is False
    z = transferred.get_latent_representation()
    assert z.shape == (40, 8) and np.isfinite(z).all()


def test_neighbour_encoding_starts_at_zero_and_learns(corpus):
    model = sf.CellPLM(_setup(corpus), **TINY)
    model.train(max_epochs=1)
    spatial = corpus[corpus.obs["dataset"] == "spatial"].copy()
    sf.CellPLM.setup_anndata(spatial, group_key="sample", spatial_key="spatial")
    carried = sf.CellPLM.from_model(model, spatial, n_pe_neighbors=4)
    plain = sf.CellPLM.from_model(model, spatial)
    # added to a pre-trained model, the encoding changes nothing until it is trained
    np.testing.assert_allclose(
        carried.get_latent_representation(), plain.get_latent_representation(), atol=1e-6
    )
    carried.train(max_epochs=3, lr=1e-2)
    assert carried.module.embedder.neighbour_pe.gat.lin.weight.abs().sum() > 0
    z = carried.get_latent_representation()
    assert np.isfinite(z).all()
    assert np.abs(z - plain.get_latent_representation()).max() > 1e-4
    for bad in (-1, 2.5):
        with pytest.raises(ValueError, match="n_pe_neighbors must be"):
            sf.CellPLM.from_model(model, spatial, n_pe_neighbors=bad)
    # cells without coordinates are embedded as without the encoding
    rna = corpus[corpus.obs["dataset"] == "rna"].copy()
    sf.CellPLM.setup_anndata(rna, group_key="sample")
    on_rna = sf.CellPLM.from_model(carried, rna, n_pe_neighbors=4)
    off_rna = sf.CellPLM.from_model(carried, rna, n_pe_neighbors=0)
    np.testing.assert_allclose(
        on_rna.get_latent_representation(), off_rna.get_latent_representation(), atol=1e-6
    )


def test_unknown_genes_error(corpus):
    model = sf.CellPLM(_setup(corpus), **TINY)
    new = _counts(10, ["gene_1", "gene_2", "NOT_A_GENE", "ALSO_NOT"])
    sf.CellPLM.setup_anndata(new)
    with pytest.raises(ValueError, match=r"2 of 4 genes are not in the model's vocabulary"):
        sf.CellPLM.from_model(model, new, drop_unknown_genes=False)
    with pytest.raises(ValueError, match="NOT_A_GENE"):
        sf.CellPLM.from_model(model, new, drop_unknown_genes=False)
    none = _counts(10, ["X1", "X2"])
    sf.CellPLM.setup_anndata(none)
    with pytest.raises(ValueError, match="none of the 2 genes"):
        sf.CellPLM.from_model(model, none, drop_unknown_genes=True)
    assert sf.CellPLM.from_model(model, new, drop_unknown_genes=True).module.columns.tolist() == [
        0,
        1,
    ]


def test_single_cell_sample_error():
    adata = _counts(5, ["g1", "g2", "g3"])
    adata.obs["sample"] = ["a", "a", "b", "b", "c"]
    with pytest.raises(ValueError, match="single cell"):
        sf.CellPLM.setup_anndata(adata, group_key="sample")
    with pytest.raises(ValueError, match=r"has 1 cells x 3 genes; at least 2 cell"):
        sf.CellPLM.setup_anndata(adata[:1].copy())


def test_nb_needs_counts(corpus):
    corpus.X = corpus.X * 0.5
    with pytest.raises(ValueError, match="non-integer"):
        sf.CellPLM(_setup(corpus), **TINY, likelihood="nb")


def test_authors_layout_round_trip_and_report(corpus, tmp_path):
    model = sf.CellPLM(_setup(corpus), **TINY, likelihood="nb")
    model.train(max_epochs=1)
    prefix = str(tmp_path / "ckpt")
    export_authors_checkpoint(model, prefix)
    config = json.load(open(prefix + ".config.json"))
    assert config["gene_list"] == model.vocabulary and config["enc_hid"] == 16
    query = corpus.copy()
    sf.CellPLM.setup_anndata(query, group_key="sample")
    loaded = sf.CellPLM.load_pretrained(prefix, query)
    report = loaded.pretrained_report_
    assert report["unmatched_checkpoint_parameters"] == []
    assert report["parameters_not_in_checkpoint"] == []
    assert report["n_genes_matched"] == corpus.n_vars
    # the released model: raw-count log1p input, no positional encoding
    assert loaded.module.input_transform == "log1p" and not loaded.module.embedder.spatial_pe
    state = torch.load(prefix + ".best.ckpt", map_location="cpu", weights_only=True)
    torch.testing.assert_close(
        loaded.module.embedder.gene_embedding.detach().cpu(),
        state["model_state_dict"]["embedder.feat_enc.emb"],
    )


def test_checkpoint_config_mismatch(corpus, tmp_path):
    model = sf.CellPLM(_setup(corpus), **TINY)
    prefix = str(tmp_path / "ckpt")
    export_authors_checkpoint(model, prefix)
    config = json.load(open(prefix + ".config.json"))
    json.dump({**config, "enc_hid": 32}, open(prefix + ".config.json", "w"))
    with pytest.raises(ValueError, match="does not match its config"):
        sf.CellPLM.load_pretrained(prefix, corpus)
    json.dump({**config, "latent_mod": "vae"}, open(prefix + ".config.json", "w"))
    with pytest.raises(ValueError, match="latent_mod"):
        sf.CellPLM.load_pretrained(prefix, corpus)
    with pytest.raises(FileNotFoundError, match=r"best\.ckpt"):
        sf.CellPLM.load_pretrained(str(tmp_path / "missing"), corpus)


def test_parity_with_authors_package(tmp_path):
    """Same random checkpoint, same seed: the authors' package and ours embed alike."""
    why = 'run: pip install einops && pip install --no-deps "cellplm==0.1.0.post2" (.ci/run)'
    pytest.importorskip("einops", reason=why)
    omics = pytest.importorskip("CellPLM.model", reason=why)
    pipeline = pytest.importorskip("CellPLM.pipeline.cell_embedding", reason=why)
    genes = [f"G{i}" for i in range(120)]
    config = {
        "enc_mod": "flowformer",
        "enc_hid": 32,
        "enc_layers": 2,
        "post_latent_dim": 16,
        "dec_mod": "nbmlp",
        "dec_hid": 32,
        "dec_layers": 2,
        "out_dim": 120,
        "batch_num": 5,
        "dataset_num": 2,
        "model_dropout": 0.2,
        "norm": "groupnorm",
        "latent_mod": "gmvae",
        "num_clusters": 16,
        "mask_node_rate": 0.75,
        "mask_feature_rate": 0.25,
        "drop_node_rate": 0.3,
        "cat_pe": False,
        "pe_type": "sin",
        "gene_list": genes,
    }
    torch.manual_seed(0)
    theirs_model = omics.OmicsFormer(**config)
    torch.save({"model_state_dict": theirs_model.state_dict()}, tmp_path / "r.best.ckpt")
    json.dump(config, open(tmp_path / "r.config.json", "w"))
    adata = _counts(90, genes[20:], seed=5)
    pipe = pipeline.CellEmbeddingPipeline(pretrain_prefix="r", pretrain_directory=str(tmp_path))
    torch.manual_seed(0)
    theirs = pipe.predict(adata.copy()).numpy()
    sf.CellPLM.setup_anndata(adata)
    ours = sf.CellPLM.load_pretrained(str(tmp_path / "r"), adata, stochastic_embedding=True)
    assert ours.pretrained_report_["unmatched_checkpoint_parameters"] == []
    torch.manual_seed(0)
    np.testing.assert_allclose(ours.get_latent_representation(), theirs, atol=1e-4)


# ------------------------------------------------------------------------------ data paths
def test_backed_h5ad_matches_in_memory(corpus, tmp_path):
    path = tmp_path / "corpus.h5ad"
    corpus.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    _setup(backed)
    model = sf.CellPLM(backed, **TINY)
    model.train(max_epochs=1)
    z_backed = model.get_latent_representation()
    memory = ad.read_h5ad(path)
    _setup(memory)
    np.testing.assert_allclose(model.get_latent_representation(memory), z_backed, atol=1e-5)


DDP_SCRIPT = """
import sys
import numpy as np
import scfound as sf
adata = sf.datasets.synthetic_spatial(200, 12, 3, seed=0, n_fovs=4)
sf.CellPLM.setup_anndata(adata, layer="counts", group_key="fov")
model = sf.CellPLM(adata, n_hidden=16, n_heads=2, n_layers=1, n_latent=4, n_decoder_hidden=16)
model.train(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp")
import os
rank = os.environ.get("LOCAL_RANK", "0")
finite = np.isfinite(model.get_latent_representation()).all()
epochs = len(model.history["train_loss"]) if rank == "0" else "-"  # rank 0 logs
sys.stdout.write(f"RANK {rank} epochs {epochs} finite {finite}\\n")
sys.stdout.flush()
"""


def test_ddp_two_cpu_processes(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    res = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=env
    )
    assert res.returncode == 0, res.stderr[-3000:]
    # the two ranks print concurrently into one pipe, so their lines may interleave
    reports = re.findall(r"RANK (\d) epochs (\S+) finite (True|False)", res.stdout)
    assert sorted(rank for rank, _, _ in reports) == ["0", "1"], res.stdout
    assert all(finite == "True" for _, _, finite in reports)
    assert ("0", "2", "True") in reports
    assert "Starting with 2 processes" in res.stdout + res.stderr


# ---------------------------------------------------------------------------------- tools
def test_tl_embed_denoise_leave_obs_untouched(corpus):
    model = sf.CellPLM(_setup(corpus), **TINY)
    model.train(max_epochs=1)
    query = _counts(60, [f"gene_{i}" for i in range(5, 25)], seed=2)
    query.obs["sample"] = np.repeat(["s1", "s2"], 30)
    obs_before = query.obs.copy()
    sf.tl.embed(query, method="cellplm", model=model, group_key="sample")
    sf.tl.denoise(query, model=model, group_key="sample")
    assert query.obsm["X_cellplm"].shape == (60, 8)
    assert query.layers["cellplm_denoised"].shape == query.shape
    pd.testing.assert_frame_equal(query.obs, obs_before)
    assert query.uns["scfound"]["embed"]["X_cellplm"]["method"] == "cellplm"


def test_tl_impute_from_reference(corpus, synthetic):
    rna = _counts(150, [f"gene_{i}" for i in range(10, 40)], seed=1)
    rna.obs["sample"] = np.repeat(["a", "b", "c"], 50)
    sf.tl.impute(
        synthetic,
        method="cellplm",
        reference=rna,
        layer="counts",
        group_key="fov",
        reference_group_key="sample",
        max_epochs=1,
        model_kwargs=TINY,
    )
    imputed = synthetic.obsm["cellplm_imputed"]
    assert list(imputed.columns) == [f"gene_{i}" for i in range(20, 40)]
    assert imputed.shape[0] == synthetic.n_obs and np.isfinite(imputed.to_numpy()).all()
    with pytest.raises(ValueError, match="not in the reference"):
        sf.tl.impute(synthetic, method="cellplm", reference=rna, layer="counts", genes=["nope"])
    with pytest.raises(ValueError, match="reference"):
        sf.tl.impute(synthetic, method="cellplm", layer="counts")


def _typed_cells(seed=0):
    """300 cells of 3 types (each over-expresses its own 10 of 30 genes); 30 % unlabelled."""
    rng = np.random.default_rng(seed)
    n, genes = 300, [f"g{i}" for i in range(30)]
    types = np.repeat(["A", "B", "C"], 100)
    rates = np.ones((3, 30))
    for t in range(3):
        rates[t, t * 10 : (t + 1) * 10] = 12.0
    X = rng.poisson(rates[np.repeat([0, 1, 2], 100)]).astype(np.float32)
    adata = ad.AnnData(X, var=pd.DataFrame(index=genes))
    adata.obs["sample"] = np.tile(["s1", "s2", "s3"], 100)
    labels = types.astype(object).copy()
    test = rng.random(n) < 0.3
    labels[test] = "unknown"
    adata.obs["ct"] = labels
    return adata, types, test


@pytest.mark.parametrize("fine_tune", ["model", "head"])
def test_tl_annotate_learns_labels(fine_tune):
    adata, types, test = _typed_cells()
    # "head" first trains the model self-supervised: the NB likelihood embeds these counts
    # reliably at this tiny size (MSE does not)
    head = fine_tune == "head"
    sf.tl.annotate(
        adata,
        "ct",
        group_key="sample",
        fine_tune=fine_tune,
        max_epochs=60 if head else 30,
        model_kwargs={**TINY, "likelihood": "nb"} if head else TINY,
        train_kwargs={"lr": 5e-3} if head else None,
    )
    pred = adata.obs["cellplm_prediction"].astype(str).to_numpy()
    # chance is 1/3; the tiny self-supervised embedding is seed-dependent (0.85-1.0 over 4 seeds)
    assert (pred[test] == types[test]).mean() > (0.75 if head else 0.9)
    assert adata.obsm["cellplm_probabilities"].shape == (adata.n_obs, 3)
    assert adata.uns["scfound"]["annotate"]["cellplm"]["fine_tune"] == fine_tune
    with pytest.raises(KeyError, match="not found"):
        sf.tl.annotate(adata, "missing_column")
    with pytest.raises(ValueError, match="fine_tune"):
        sf.tl.annotate(adata, "ct", fine_tune="all")


def _self_supervised_typed_cells():
    """:func:`_typed_cells` (seed 1) and a tiny CellPLM trained on them without labels (NB)."""
    adata, types, test = _typed_cells(seed=1)
    sf.CellPLM.setup_anndata(adata, group_key="sample")
    torch.manual_seed(0)
    base = sf.CellPLM(adata, **TINY, likelihood="nb")
    base.train(max_epochs=30, lr=5e-3)
    return adata, types, test, base


def test_tl_annotate_from_a_labelled_reference_with_a_pretrained_model():
    adata, types, test, base = _self_supervised_typed_cells()
    reference = adata[~test].copy()
    reference.obs["ct"] = types[~test]
    query = adata[test].copy()
    del query.obs["ct"]
    before = query.obs.copy()
    sf.tl.annotate(
        query, "ct", reference=reference, model=base, group_key="sample", fine_tune="head"
    )
    pred = query.obs["cellplm_prediction"].astype(str).to_numpy()
    assert (pred == types[test]).mean() > 0.9
    pd.testing.assert_frame_equal(query.obs[before.columns], before)
    assert list(query.obsm["cellplm_probabilities"].index) == list(query.obs_names)


def test_tl_annotate_adapts_then_fine_tunes_a_pretrained_model():
    adata, types, test, base = _self_supervised_typed_cells()
    before = {k: v.clone() for k, v in base.module.state_dict().items()}
    sf.tl.annotate(adata, "ct", model=base, group_key="sample", adapt_epochs=5, max_epochs=10)
    pred = adata.obs["cellplm_prediction"].astype(str).to_numpy()
    assert (pred[test] == types[test]).mean() > 0.9
    info = adata.uns["scfound"]["annotate"]["cellplm"]
    assert (info["adapt_epochs"], info["max_epochs"]) == (5, 10)
    # the fine-tuning after the probe keeps a history (scvi-tools keeps none after a probe)
    assert info["epochs"] == 10 and np.isfinite(info["final_train_loss"])
    # the user's pre-trained model is not trained in place
    assert all(torch.equal(base.module.state_dict()[k], v) for k, v in before.items())
    lpft = adata.obsm["cellplm_probabilities"].to_numpy()
    # the same adaptation and probe without the fine-tuning: fine-tuning must change the model
    sf.tl.annotate(adata, "ct", model=base, group_key="sample", fine_tune="head", adapt_epochs=5)
    assert not np.allclose(adata.obsm["cellplm_probabilities"].to_numpy(), lpft, atol=1e-3)
    sf.tl.annotate(adata, "ct", model=base, group_key="sample", fine_tune="head")
    assert adata.uns["scfound"]["annotate"]["cellplm"]["adapt_epochs"] == 0
    with pytest.raises(ValueError, match="adapt_epochs"):
        sf.tl.annotate(adata, "ct", model=base, group_key="sample", adapt_epochs=-1)


def test_annotation_head_alone_leaves_the_model_frozen():
    adata, types, test, base = _self_supervised_typed_cells()
    with pytest.raises(ValueError, match="no annotation head"):
        base.train_annotation_head()
    labelled = adata.copy()
    sf.CellPLM.setup_anndata(labelled, group_key="sample", labels_key="ct")
    model = sf.CellPLM.from_model(base, labelled)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        model.train_annotation_head(batch_size=0)
    frozen = {k: v.clone() for k, v in model.module.state_dict().items() if "classifier" not in k}
    embedding = model.get_latent_representation()
    model.train_annotation_head(max_epochs=100)
    state = model.module.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    np.testing.assert_array_equal(model.get_latent_representation(), embedding)
    assert (model.predict()[test] == types[test]).mean() > 0.9
    unlabelled = adata.copy()
    unlabelled.obs["ct"] = "unknown"
    sf.CellPLM.setup_anndata(unlabelled, group_key="sample", labels_key="ct")
    with pytest.raises(ValueError, match="no annotation head"):
        sf.CellPLM.from_model(base, unlabelled).train_annotation_head()


def test_perturbation_effect_is_learned():
    """Cells with gene p0 knocked down express g0-g4 highly; the model predicts it for controls."""
    rng = np.random.default_rng(0)
    genes = ["p0"] + [f"g{i}" for i in range(19)]
    n = 240
    perturbed = np.arange(n) % 2 == 1
    rates = np.full((n, 20), 3.0)
    rates[perturbed, 0] = 0.0
    rates[np.ix_(perturbed, np.arange(1, 6))] = 15.0
    adata = ad.AnnData(rng.poisson(rates).astype(np.float32), var=pd.DataFrame(index=genes))
    adata.obs["perturbation"] = np.where(perturbed, "p0", "ctrl")
    adata.obs["sample"] = np.repeat(["s1", "s2", "s3"], 80)
    sf.CellPLM.setup_anndata(adata, group_key="sample", perturbation_key="perturbation")
    model = sf.CellPLM(adata, **TINY, dropout=0.0, use_covariates=False)
    model.train(max_epochs=50, lr=3e-3)
    controls = adata[~perturbed].copy()
    sf.CellPLM.setup_anndata(controls, group_key="sample")
    base = model.get_denoised_expression(controls)
    after = model.get_perturbed_expression(["p0"], controls)
    effect = after[:, 1:6].mean() - base[:, 1:6].mean()
    other = after[:, 6:].mean() - base[:, 6:].mean()  # compositional: the others' share drops
    assert effect > 0.5 and effect - other > 1.0
    with pytest.raises(ValueError, match=r"not in adata\.var_names"):
        model.get_perturbed_expression(["nope"], controls)
    bad = adata.copy()
    bad.obs["perturbation"] = "XYZ+p0"
    with pytest.raises(ValueError, match="XYZ"):
        sf.CellPLM.setup_anndata(bad, perturbation_key="perturbation")


def test_kl_weight_warms_up_to_its_maximum(corpus):
    """``max_kl_weight`` reaches the training plan (the default is small: see ``KL_WEIGHT``)."""
    from scfound.models.cellplm._model import KL_WEIGHT

    model = sf.CellPLM(_setup(corpus), **TINY)
    model.train(max_epochs=3, n_steps_kl_warmup=2)
    assert float(np.asarray(model.history["kl_weight"]).ravel()[-1]) == pytest.approx(KL_WEIGHT)
    model.train(max_epochs=3, n_steps_kl_warmup=2, max_kl_weight=0.5)
    assert float(np.asarray(model.history["kl_weight"]).ravel()[-1]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="max_kl_weight"):
        model.train(max_epochs=1, max_kl_weight=float("nan"))


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


def test_training_is_quiet_but_shows_progress(synthetic, capfd, caplog, monkeypatch):
    def run():
        sf.CellPLM.setup_anndata(synthetic, layer="counts", group_key="fov", spatial_key="spatial")
        model = sf.CellPLM(synthetic, **TINY)
        model.train(max_epochs=2, train_size=0.5)
        assert model.trainer.progress_bar_callback is not None
        model.get_latent_representation()

    assert "Epoch 2/2" in _run_quietly(capfd, caplog, run)
    monkeypatch.setattr(sf.settings, "progress_bar", False)
    model = sf.CellPLM(synthetic, **TINY)
    assert "Epoch" not in _run_quietly(capfd, caplog, lambda: model.train(max_epochs=1))
    assert model.trainer.progress_bar_callback is None
