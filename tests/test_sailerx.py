"""SAILERX: chromosome grouping, the cross-modal term, training, hybrid cells, save/load, checks."""

import os

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import scfound as sf
from scfound.models.sailerx._model import (
    alignment_weights,
    chromosome_groups,
    peak_chromosomes,
)
from scfound.models.sailerx._module import local_structure_loss

TINY = {"n_hidden": (16, 8), "n_latent": 6, "n_rna_pcs": 8}
MODS = {"atac": "atac", "rna": "rna"}


def _paired(seed=0, n_cells=120, n_peaks=60, n_genes=30, peak_names="colon"):
    """Three cell types, paired RNA (Poisson) + ATAC (Bernoulli), peaks on chr1/chr2/chr10."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 3, n_cells)
    access = rng.random((3, n_peaks)) * 0.4
    atac = (rng.random((n_cells, n_peaks)) < access[types]).astype(np.float32)
    chroms = np.array(["chr1", "chr2", "chr10"])[np.arange(n_peaks) % 3]
    sep = {"colon": (":", "-"), "dash": ("-", "-"), "none": ("", "")}[peak_names]
    names = [f"{c}{sep[0]}{100 * i}{sep[1]}{100 * i + 50}" for i, c in enumerate(chroms)]
    if peak_names == "none":
        names = [f"peak{i}" for i in range(n_peaks)]
    cells = [f"cell{i}" for i in range(n_cells)]
    A = ad.AnnData(sp.csr_matrix(atac), obs=pd.DataFrame(index=cells))
    A.var_names = names
    A.layers["counts"] = A.X.copy()
    mean = rng.gamma(2.0, 1.0, (3, n_genes)) * 3
    R = ad.AnnData(sp.csr_matrix(rng.poisson(mean[types]).astype(np.float32)))
    R.obs_names = cells
    R.layers["counts"] = R.X.copy()
    mdata = md.MuData({"atac": A, "rna": R})
    mdata.obs["batch"] = pd.Categorical(np.where(np.arange(n_cells) % 2, "a", "b"))
    mdata.obs["cell_type"] = types.astype(str)
    return mdata


@pytest.fixture(scope="module")
def trained():
    mdata = _paired()
    sf.SAILERX.setup_mudata(
        mdata, atac_layer="counts", rna_layer="counts", batch_key="batch", modalities=MODS
    )
    torch.manual_seed(0)
    model = sf.SAILERX(mdata, local_weight=50.0, **TINY)
    model.train(max_epochs=10, lr=1e-2, batch_size=40, train_size=1.0, enable_progress_bar=False)
    return mdata, model


# ---------------------------------------------------------------- pieces
def test_chromosomes_from_var_names_and_fallback():
    var = pd.DataFrame(index=["chr2:5-9", "chr10-1-4", "chr1_7_9", "chrX:1-2"])
    chroms = peak_chromosomes(var, var.index, "chrom")  # no column: parsed from the names
    assert chroms.tolist() == ["chr2", "chr10", "chr1", "chrX"]
    order, names, sizes = chromosome_groups(chroms)
    assert names == ["chr1", "chr2", "chr10", "chrX"] and sizes == [1, 1, 1, 1]
    assert order.tolist() == [2, 0, 1, 3]
    var["chrom"] = ["b", "a", "b", "a"]  # the column wins over the names
    assert peak_chromosomes(var, var.index, "chrom").tolist() == ["b", "a", "b", "a"]
    assert set(peak_chromosomes(var, var.index, None)) == {"all"}
    bad = pd.DataFrame(index=["peak1", "peak2"])
    with pytest.raises(ValueError, match="chrom_key"):
        peak_chromosomes(bad, bad.index, "chrom")


def test_local_structure_term_on_a_hand_example():
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    z = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    # S_rna = [[1,0,1],[0,1,0],[1,0,1]], S_atac = [[1,1,0],[1,1,0],[0,0,1]]: 4 pairs differ by 1
    ones = torch.ones(3)
    assert local_structure_loss(ref, z, ones).item() == pytest.approx(4 / 3)
    w = torch.tensor([1.0, 0.5, 1.0])  # pairs (0,1),(1,0) weigh 0.5, (0,2),(2,0) weigh 1
    assert local_structure_loss(ref, z, w).item() == pytest.approx(3 / 3)
    batch = torch.tensor([0, 0, 1])  # only pairs within a batch: (0,1) and (1,0)
    assert local_structure_loss(ref, z, ones, batch).item() == pytest.approx(2 / 3)
    paired = torch.tensor([1.0, 0.0, 1.0])  # cell 1 without RNA: pairs (0,2),(2,0)
    assert local_structure_loss(ref, z, ones, None, paired).item() == pytest.approx(2 / 3)
    assert local_structure_loss(ref, ref, ones).item() == pytest.approx(0.0, abs=1e-6)


def test_alignment_weights_follow_the_depth_ratio():
    w = alignment_weights(np.array([10.0, 20.0, 40.0]), np.array([10.0, 10.0, 10.0]))
    np.testing.assert_allclose(w, [0.0, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(alignment_weights(np.ones(3), np.ones(3)), 1.0)


# ---------------------------------------------------------------- model
def test_training_lowers_the_loss_and_aligns_to_the_rna(trained):
    mdata, model = trained
    h = model.history
    recon = h["reconstruction_loss_train"].to_numpy().ravel()
    local = h["local_loss_train"].to_numpy().ravel()
    assert recon[-1] < recon[0] and local[-1] < 0.7 * local[0]
    z = model.get_latent_representation()
    assert z.shape == (mdata.n_obs, TINY["n_latent"]) and np.isfinite(z).all()
    assert len(model.chromosomes_) == 3
    # the user's data: no embedding or normalised layer written
    assert set(mdata.obsm) == {"atac", "rna"}  # muon's own modality masks only
    assert set(mdata.mod["rna"].layers) == {"counts"}


def test_save_load_gives_the_same_embedding(trained, tmp_path):
    _, model = trained
    model.save(str(tmp_path / "m"))
    again = _paired()
    loaded = sf.SAILERX.load(str(tmp_path / "m"), again)
    np.testing.assert_allclose(
        loaded.get_latent_representation(), model.get_latent_representation(), atol=1e-5
    )
    assert os.path.exists(tmp_path / "m" / "model.json")


def test_save_with_its_mudata_loads_without_data(trained, tmp_path):
    _, model = trained
    model.save(str(tmp_path / "m"), save_anndata=True)
    assert os.path.exists(tmp_path / "m" / "mdata.h5mu")
    loaded = sf.SAILERX.load(str(tmp_path / "m"))
    assert isinstance(loaded.adata, md.MuData)
    np.testing.assert_allclose(
        loaded.get_latent_representation(), model.get_latent_representation(), atol=1e-5
    )


def test_hybrid_cells_train_and_are_embedded():
    full = _paired(seed=1)
    rna = full.mod["rna"][40:].copy()  # the first 40 cells have no RNA
    mdata = md.MuData({"atac": full.mod["atac"].copy(), "rna": rna})
    with pytest.raises(ValueError, match="hybrid=True"):
        sf.SAILERX.setup_mudata(mdata, atac_layer="counts", rna_layer="counts", modalities=MODS)
    assert "_scvi_uuid" not in mdata.uns
    sf.SAILERX.setup_mudata(
        mdata, atac_layer="counts", rna_layer="counts", hybrid=True, modalities=MODS
    )
    torch.manual_seed(0)
    model = sf.SAILERX(mdata, **TINY)
    assert model.paired_cells.sum() == 80 and not model.paired_cells[:40].any()
    model.train(max_epochs=2, batch_size=40, train_size=1.0, enable_progress_bar=False)
    z = model.get_latent_representation()
    assert z.shape == (120, TINY["n_latent"]) and np.isfinite(z).all()
    # ATAC-only cells carry no reference and no weight
    assert (model._cell_data["alignment_weight"][:40] == 0).all()


def test_paired_key_and_user_embedding():
    mdata = _paired(seed=2, peak_names="dash")
    mdata.obs["use_rna"] = np.arange(mdata.n_obs) >= 20
    emb = np.random.default_rng(0).normal(size=(mdata.n_obs, 5))
    mdata.obsm["X_ref"] = emb
    sf.SAILERX.setup_mudata(
        mdata,
        atac_layer="counts",
        rna_layer="counts",
        rna_embedding_key="X_ref",
        paired_key="use_rna",
        chrom_key="chrom",
        modalities=MODS,
    )
    model = sf.SAILERX(mdata, **TINY)
    ref = model._cell_data["rna_reference"]
    np.testing.assert_allclose(ref[20:], emb[20:], rtol=1e-6)
    assert (ref[:20] == 0).all() and model.paired_cells.sum() == mdata.n_obs - 20
    assert model.chromosomes_ == ["chr1", "chr2", "chr10"]


def _state(mdata):
    return list(mdata.obs.columns), set(mdata.uns), set(mdata.mod["atac"].obs.columns)


def _halve(m):
    m.mod["atac"].layers["counts"] = m["atac"].X * 0.5


def _negate(m):
    m.mod["atac"].layers["counts"] = -m["atac"].X


def _nan_batch(m):
    m.obs["batch"] = m.obs["batch"].astype(object).where(np.arange(m.n_obs) > 0, None)


def _nan_embedding(m):
    m.obsm["X_ref"] = np.full((m.n_obs, 3), np.nan)


def _nothing(m):
    return None


@pytest.mark.parametrize(
    ("change", "kwargs", "error", "match"),
    [
        (_halve, {}, ValueError, "integer"),
        (_negate, {}, ValueError, "negative"),
        (_nan_batch, {"batch_key": "batch"}, ValueError, "missing"),
        (_nothing, {"chrom_key": "chrom", "_names": "none"}, ValueError, "chrom_key"),
        (_nan_embedding, {"rna_embedding_key": "X_ref"}, ValueError, "finite"),
        (_nothing, {"batch_key": "nope"}, KeyError, "nope"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(change, kwargs, error, match):
    kwargs = dict(kwargs)
    mdata = _paired(peak_names=kwargs.pop("_names", "colon"))
    change(mdata)
    before = _state(mdata)
    with pytest.raises(error, match=match):
        sf.SAILERX.setup_mudata(
            mdata, atac_layer="counts", rna_layer="counts", modalities=MODS, **kwargs
        )
    assert _state(mdata) == before


def test_modalities_must_name_the_atac_and_an_rna_reference():
    mdata = _paired()
    with pytest.raises(ValueError, match="chromatin"):
        sf.SAILERX.setup_mudata(mdata, modalities={"rna": "rna"})
    with pytest.raises(ValueError, match="RNA reference"):
        sf.SAILERX.setup_mudata(mdata, modalities={"atac": "atac"})
    with pytest.raises(KeyError, match="nothere"):
        sf.SAILERX.setup_mudata(mdata, modalities={"atac": "atac", "rna": "nothere"})


def test_tl_embed_writes_only_x_sailerx_for_every_cell():
    full = _paired(seed=3)
    mdata = md.MuData({"atac": full.mod["atac"].copy(), "rna": full.mod["rna"][30:].copy()})
    had_obs = list(mdata.obs.columns)
    with pytest.raises(ValueError, match="hybrid"):
        sf.tl.embed(mdata, "sailerx", layer="counts", max_epochs=1, model_kwargs=TINY)
    assert "X_sailerx" not in mdata.obsm
    sf.tl.embed(mdata, "sailerx", layer="counts", max_epochs=1, model_kwargs=TINY, hybrid=True)
    assert mdata.obsm["X_sailerx"].shape == (mdata.n_obs, TINY["n_latent"])
    assert list(mdata.obs.columns) == had_obs
    assert all(not any(k.startswith("_scvi") for k in m.obs) for m in mdata.mod.values())
    assert "X_sailerx" in mdata.uns["scfound"]["embed"]


# ---------------------------------------------------------------- real data
DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mop_snareseq.h5mu")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(DATA), reason="MoP SNARE-seq not available")
def test_mop_snareseq_subset_aligns_the_chromatin_to_the_rna():
    """1,000 MoP cells x the 2,000 most accessible peaks: the cross-modal term is learned."""
    full = md.read_h5mu(DATA)
    cells = np.random.default_rng(0).choice(full.n_obs, 1000, replace=False)
    atac = full.mod["atac"][cells]
    top = np.argsort(-np.asarray((atac.layers["counts"] > 0).sum(0)).ravel())[:2000]
    mdata = md.MuData({"atac": atac[:, np.sort(top)].copy(), "rna": full.mod["rna"][cells].copy()})
    mdata.obs["cell_type"] = mdata.mod["rna"].obs["cell_type"].to_numpy()
    sf.SAILERX.setup_mudata(mdata, atac_layer="counts", rna_layer="counts", modalities=MODS)
    assert len(mdata.mod["atac"].var["chrom"].unique()) >= 19
    runs = {}
    for weight in (0.0, 1000.0):
        torch.manual_seed(0)
        model = sf.SAILERX(mdata, local_weight=weight)
        model.train(
            max_epochs=5, lr=5e-3, batch_size=128, train_size=1.0, enable_progress_bar=False
        )
        runs[weight] = model
    z = {w: torch.as_tensor(m.get_latent_representation()) for w, m in runs.items()}
    cell_data = runs[1000.0]._cell_data
    ref = torch.as_tensor(cell_data["rna_reference"])
    ones = torch.ones(len(ref))
    gap = {w: local_structure_loss(ref[:500], z[w][:500], ones[:500]).item() for w in z}
    assert gap[1000.0] < 0.8 * gap[0.0]
