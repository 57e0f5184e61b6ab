"""SAILER: setup checks, loss terms, training, invariant imputation, save/load, tl, simulator."""

import os
import re
import subprocess
import sys
import textwrap

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import scfound as sf
from scfound.models.sailer import SAILERModule, SAILERTrainingPlan
from scfound.models.sailer._module import pairwise_gaussian_kl

TINY = {"n_hidden": (32, 16), "n_latent": 4}


def _atac(seed=0, n_cells=300, **kwargs):
    kwargs = {"preset": "sim3", "n_peaks": 200, "n_background": 200, "mu": [60, 120], **kwargs}
    return sf.datasets.simulate_atac(n_cells=n_cells, seed=seed, **kwargs)


@pytest.fixture(scope="module")
def trained():
    atac = _atac()
    sf.SAILER.setup_anndata(atac, layer="counts", batch_key="batch")
    torch.manual_seed(0)
    model = sf.SAILER(atac, **TINY)
    model.train(max_epochs=100, batch_size=64, enable_progress_bar=False)
    return atac, model


# ---------------------------------------------------------------- setup checks
def _state(adata):
    return list(adata.obs.columns), set(adata.uns), set(adata.obsm)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda a: a.layers.__setitem__("counts", -a.layers["counts"]), ValueError, "negative"),
        (lambda a: a.layers.__setitem__("counts", a.layers["counts"] * 0.5), ValueError, "integer"),
        (
            lambda a: a.obs.__setitem__(
                "batch",
                a.obs["batch"]
                .cat.add_categories([])
                .astype(object)
                .where(np.arange(a.n_obs) > 0, None),
            ),
            ValueError,
            "batch",
        ),
    ],
)
def test_setup_refuses_bad_input_and_leaves_the_data_unchanged(change, error, match):
    atac = _atac(n_cells=60)
    change(atac)
    before = _state(atac)
    with pytest.raises(error, match=match):
        sf.SAILER.setup_anndata(atac, layer="counts", batch_key="batch")
    assert _state(atac) == before


def test_setup_checks_the_continuous_confounders():
    atac = _atac(n_cells=60)
    atac.obs["tss"] = np.linspace(0, 1, atac.n_obs)
    atac.obs.loc[atac.obs_names[3], "tss"] = np.nan
    before = _state(atac)
    with pytest.raises(ValueError, match=r"adata.obs\['tss'\].*missing"):
        sf.SAILER.setup_anndata(atac, layer="counts", continuous_covariate_keys=["tss"])
    atac.obs["tss"] = "high"
    with pytest.raises(ValueError, match=r"'tss'.*must be numeric"):
        sf.SAILER.setup_anndata(atac, layer="counts", continuous_covariate_keys=["tss"])
    with pytest.raises(KeyError, match="not_there"):
        sf.SAILER.setup_anndata(atac, layer="counts", batch_key="not_there")
    assert _state(atac) == before


def test_empty_cells_and_peaks_are_warned_and_handled():
    atac = _atac(n_cells=60)
    counts = atac.layers["counts"].tolil()
    counts[0, :] = 0
    counts[:, 5] = 0
    atac.layers["counts"] = sp.csr_matrix(counts)
    with pytest.warns(UserWarning) as record:
        sf.SAILER.setup_anndata(atac, layer="counts")
    messages = " ".join(str(w.message) for w in record)
    assert "1 cells" in messages and "1 peaks" in messages
    model = sf.SAILER(atac, **TINY)
    model.train(max_epochs=2, batch_size=32, enable_progress_bar=False)
    z = model.get_latent_representation()
    assert np.isfinite(z).all()


# ------------------------------------------------------------------ the loss
def test_pairwise_kl_matches_the_pairwise_formula():
    gen = torch.Generator().manual_seed(0)
    mean, var = torch.randn(5, 3, generator=gen), torch.rand(5, 3, generator=gen) + 0.2
    brute = torch.zeros(5, 5)
    for i in range(5):
        for j in range(5):
            p = torch.distributions.Normal(mean[i], var[i].sqrt())
            q = torch.distributions.Normal(mean[j], var[j].sqrt())
            brute[i, j] = torch.distributions.kl_divergence(p, q).sum()
    torch.testing.assert_close(pairwise_gaussian_kl(mean, var), brute.mean())


def test_positive_weight_multiplies_the_accessible_entries_only():
    """The authors' main loop passed it as ``weight=``, scaling the 0s too."""
    module = SAILERModule(n_input=6, n_hidden=(4,), n_latent=2, pos_weight=1.0)
    weighted = SAILERModule(n_input=6, n_hidden=(4,), n_latent=2, pos_weight=7.0)
    weighted.load_state_dict({**module.state_dict(), "pos_weight": torch.tensor(7.0)})
    module.eval(), weighted.eval()

    def recon(m, x):
        inf = m.inference(x)
        gen = m.generative(inf["z"], inf["log_depth"])
        return m.loss({}, inf, gen, kl_weight=0.0).reconstruction_loss["reconstruction_loss"]

    zeros, ones = torch.zeros(3, 6), torch.ones(3, 6)
    torch.testing.assert_close(recon(weighted, zeros), recon(module, zeros))
    torch.testing.assert_close(recon(weighted, ones), 7.0 * recon(module, ones))


def test_pos_weight_none_is_the_ratio_of_zeros_to_ones():
    atac = _atac(n_cells=60)
    sf.SAILER.setup_anndata(atac, layer="counts")
    ones = float((atac.layers["counts"] > 0).sum())
    ratio = (atac.n_obs * atac.n_vars - ones) / ones
    model = sf.SAILER(atac, pos_weight=None, **TINY)
    assert model.module.pos_weight.item() == pytest.approx(ratio, rel=1e-5)
    assert ratio > 2  # sparse data: the paper's weight differs from the default


def test_tfidf_encoder_input_reads_depth_normalised_profiles():
    atac = _atac(n_cells=60)
    sf.SAILER.setup_anndata(atac, layer="counts")
    model = sf.SAILER(atac, encoder_input="tfidf", **TINY)
    binary = sp.csr_matrix(atac.layers["counts"] > 0).toarray().astype(np.float32)
    idf = atac.n_obs / np.maximum(binary.sum(0), 1)
    np.testing.assert_allclose(model.module.idf.numpy(), idf, rtol=1e-5)
    module = model.module.eval()
    x = torch.as_tensor(binary[:5])
    expected = torch.log1p(1e4 * x / x.sum(1, keepdim=True) * module.idf)
    torch.testing.assert_close(
        module.inference(x)["qz_m"], module.mean_encoder(module.encoder(expected))
    )
    with pytest.raises(ValueError, match="encoder_input"):
        sf.SAILER(atac, encoder_input="counts", **TINY)
    with pytest.raises(ValueError, match="dropout_rate"):
        sf.SAILER(atac, dropout_rate=1.0, **TINY)


def test_annealing_schedule_warms_up_then_cycles():
    module = SAILERModule(n_input=4, n_hidden=(4,), n_latent=2)
    plan = SAILERTrainingPlan(module, max_epochs=42, warmup_epochs=2, n_cycles=4)
    betas = [plan.beta(e) for e in range(42)]
    assert betas[:2] == [0.0, 0.0]
    assert plan.cycle_epochs == 10
    assert betas[2] == 0.0 and betas[4] == pytest.approx(0.4) and betas[7:12] == [1.0] * 5
    assert betas[12] == 0.0 and betas[-1] == 1.0


# ----------------------------------------------------------------- training
def test_training_lowers_the_loss_and_embeds_every_cell(trained):
    atac, model = trained
    loss = model.history["reconstruction_loss_train"].iloc[:, 0].to_numpy()
    assert loss[-1] < 0.9 * loss[0]
    z = model.get_latent_representation()
    assert z.shape == (atac.n_obs, 4) and np.isfinite(z).all()
    assert model.module.pos_weight.item() == 1.0  # balanced by default
    assert "mi_penalty_train" in model.history


def test_accessibility_estimates_do_not_follow_depth(trained):
    atac, model = trained
    estimates = model.get_accessibility_estimates()
    assert estimates.shape == (atac.n_obs, atac.n_vars)
    assert ((estimates.to_numpy() > 0) & (estimates.to_numpy() < 1)).all()
    depth = np.log(np.asarray((atac.layers["counts"] > 0).sum(1)).ravel())
    raw = np.corrcoef(depth, np.asarray((atac.layers["counts"] > 0).mean(1)).ravel())[0, 1]
    fixed = np.corrcoef(depth, estimates.to_numpy().mean(1))[0, 1]
    assert raw > 0.9 and abs(fixed) < 0.3, (raw, fixed)
    # decoded in the other batch the profiles change; an unknown batch is refused
    other = model.get_accessibility_estimates(reference_batch="batch_0")
    assert not np.allclose(other.to_numpy(), estimates.to_numpy())
    with pytest.raises(ValueError, match="reference_batch='nope'"):
        model.get_accessibility_estimates(reference_batch="nope")
    sub = model.get_accessibility_estimates(indices=[0, 2], peaks=["peak_3", "peak_1"])
    np.testing.assert_allclose(
        sub.to_numpy(), estimates.iloc[[0, 2]][["peak_3", "peak_1"]], rtol=1e-5
    )


def test_untrained_model_refuses_inference():
    atac = _atac(n_cells=60)
    sf.SAILER.setup_anndata(atac, layer="counts")
    with pytest.raises(RuntimeError, match="not trained"):
        sf.SAILER(atac, **TINY).get_latent_representation()


def test_save_and_load_round_trip(trained, tmp_path):
    atac, model = trained
    model.save(tmp_path / "sailer")
    loaded = sf.SAILER.load(tmp_path / "sailer", atac.copy())
    np.testing.assert_allclose(
        loaded.get_latent_representation(), model.get_latent_representation(), rtol=1e-5
    )
    for name in ("pos_weight", "idf", "depth_mean", "depth_std"):
        torch.testing.assert_close(getattr(loaded.module, name), getattr(model.module, name))
    # new cells with the model's peaks are embedded; other peaks are refused
    new = _atac(seed=1)
    assert model.get_latent_representation(new).shape == (new.n_obs, 4)
    with pytest.raises(ValueError, match="do not match"):
        model.get_latent_representation(new[:, ::-1].copy())


# ----------------------------------------------------------------------- tl
def test_tl_writes_exactly_its_keys_and_reuses_the_model():
    atac = _atac(n_cells=120)
    obs, layers = atac.obs.copy(), set(atac.layers)
    model = sf.tl.embed(
        atac,
        "sailer",
        layer="counts",
        batch_key="batch",
        max_epochs=3,
        model_kwargs=TINY,
        return_model=True,
    )
    assert set(atac.obsm) == {"X_sailer"} and atac.obsm["X_sailer"].shape == (atac.n_obs, 4)
    pd.testing.assert_frame_equal(atac.obs, obs)
    sf.tl.denoise(atac, "sailer", model=model)
    assert set(atac.layers) == layers | {"sailer_denoised"}
    values = atac.layers["sailer_denoised"]
    assert values.shape == atac.shape and 0 < values.min() and values.max() < 1
    np.testing.assert_allclose(values, model.get_accessibility_estimates().to_numpy(), rtol=1e-5)
    record = atac.uns["scfound"]["embed"]["X_sailer"]
    assert record["method"] == "sailer" and record["batch_key"] == "batch"
    pd.testing.assert_frame_equal(atac.obs, obs)


# ----------------------------------------------------------------- simulator
def test_simulator_presets():
    sim1 = sf.datasets.simulate_atac(preset="sim1", n_cells=2000, n_peaks=300, seed=0)
    share = sim1.obs["cell_type"].value_counts(normalize=True)
    assert len(share) == 5 and share.min() == pytest.approx(0.01, abs=0.002)
    assert sim1.obs["n_fragments"].mean() == pytest.approx(5000, rel=0.1)
    peaks = sim1.var["is_peak"].to_numpy()
    in_peaks = sim1.X[:, peaks].sum() / sim1.X.sum()
    # rho of the fragments plus the background's share of peak features
    assert in_peaks == pytest.approx(0.4 + 0.6 * 0.5, abs=0.02)
    sim3 = sf.datasets.simulate_atac(preset="sim3", n_cells=600, n_peaks=300, seed=0)
    types = {b: set(c) for b, c in sim3.obs.groupby("batch", observed=True)["cell_type"]}
    assert types["batch_0"] ^ types["batch_1"] == {"type_4", "type_5"}
    depth = sim3.obs.groupby("batch", observed=True)["n_fragments"].mean()
    assert depth["batch_1"] / depth["batch_0"] == pytest.approx(2, rel=0.2)
    np.testing.assert_array_equal(sim3.X.toarray(), sim3.layers["counts"].toarray())
    again = sf.datasets.simulate_atac(preset="sim3", n_cells=600, n_peaks=300, seed=0)
    assert (again.X != sim3.X).nnz == 0


def test_simulator_uses_given_bulk_profiles_and_checks_them():
    bulk = pd.DataFrame([[1.0, 0, 0, 1], [0, 1.0, 1, 0]], index=["a", "b"], columns=list("pqrs"))
    sim = sf.datasets.simulate_atac(bulk, n_cells=200, mu=400, rho=1.0, n_background=0)
    counts = sim.X.toarray()
    is_a = (sim.obs["cell_type"] == "a").to_numpy()
    assert counts[is_a][:, [1, 2]].sum() == 0 and counts[~is_a][:, [0, 3]].sum() == 0
    assert list(sim.var_names) == list("pqrs")
    with pytest.raises(ValueError, match="non-negative"):
        sf.datasets.simulate_atac(-bulk)
    with pytest.raises(ValueError, match="preset"):
        sf.datasets.simulate_atac(preset="sim9")


def test_pseudobulk_profiles_average_accessibility_per_type():
    atac = _atac(n_cells=1000, mu=[300, 600])
    top = sf.datasets.pseudobulk_profiles(atac, "cell_type", layer="counts", n_peaks=50)
    assert top.shape == (6, 50)
    peaks = atac[:, atac.var["is_peak"].to_numpy()]
    profiles = sf.datasets.pseudobulk_profiles(peaks, "cell_type", layer="counts")
    np.testing.assert_allclose(profiles.sum(1), 1.0)
    # the most abundant type first; each type's profile is closest to its own true profile
    counts = atac.obs["cell_type"].value_counts()
    assert counts[profiles.index[0]] == counts.max()
    truth = atac.varm["bulk"].loc[profiles.columns, profiles.index].T.to_numpy()
    corr = np.corrcoef(profiles.to_numpy(), truth)[:6, 6:]
    np.testing.assert_array_equal(corr.argmax(1), np.arange(6))


# ------------------------------------------------------------------ atlas scale
def _spy_reads(monkeypatch, X):
    """Record how many rows every read of the on-disk matrix ``X`` returns."""
    reads: list[int] = []
    cls = type(X)
    original = cls.__getitem__

    def spy(self, index):
        out = original(self, index)
        reads.append(out.shape[0])
        return out

    monkeypatch.setattr(cls, "__getitem__", spy)
    return reads


@pytest.mark.filterwarnings("ignore:Writing zarr v2 data:UserWarning")
@pytest.mark.parametrize("store", ["h5ad", "zarr"])
def test_training_streams_from_disk_without_loading_the_matrix(store, tmp_path, monkeypatch):
    from scfound.models.sailer import _model

    atac = _atac(n_cells=260)
    del atac.layers["counts"]  # X holds the counts: backed mode keeps only X on disk
    if store == "h5ad":
        atac.write_h5ad(tmp_path / "atac.h5ad")
        disk = ad.read_h5ad(tmp_path / "atac.h5ad", backed="r")
    else:
        import zarr

        atac.write_zarr(tmp_path / "atac.zarr")
        group = zarr.open_group(tmp_path / "atac.zarr", mode="r")
        disk = ad.AnnData(
            X=ad.io.sparse_dataset(group["X"]),
            obs=ad.io.read_elem(group["obs"]),
            var=ad.io.read_elem(group["var"]),
        )
    sf.SAILER.setup_anndata(disk, batch_key="batch")
    monkeypatch.setattr(_model, "_BLOCK", 50)  # statistics in blocks of 50 rows
    reads = _spy_reads(monkeypatch, disk.X)
    model = sf.SAILER(disk, **TINY)
    model.train(max_epochs=2, batch_size=32, enable_progress_bar=False)
    z_disk = model.get_latent_representation(batch_size=40)
    # every read of the matrix is one block or one mini-batch, never the whole matrix
    assert reads and max(reads) <= 50 < disk.n_obs
    assert sum(reads) >= 2 * 0.9 * disk.n_obs  # two epochs of training rows were read
    assert type(disk.X).__name__ == "_CSRDataset"
    assert store == "zarr" or disk.isbacked
    assert z_disk.shape == (disk.n_obs, 4) and np.isfinite(z_disk).all()
    # the same weights give the same embedding from the in-memory copy
    memory = atac.copy()
    sf.SAILER.setup_anndata(memory, batch_key="batch")
    np.testing.assert_allclose(model.get_latent_representation(memory), z_disk, atol=1e-5)
    # and a model trained in memory gives an embedding of the same shape
    in_memory = sf.SAILER(memory, **TINY)
    in_memory.train(max_epochs=2, batch_size=32, enable_progress_bar=False)
    assert in_memory.get_latent_representation().shape == z_disk.shape


DDP_SCRIPT = """
import os
import sys

import anndata as ad
import numpy as np
import torch

import scfound as sf

torch.set_num_threads(1)
adata = ad.read_h5ad(sys.argv[1], backed="r")
sf.SAILER.setup_anndata(adata, batch_key="batch")
torch.manual_seed(0)
model = sf.SAILER(adata, n_hidden=(32, 16), n_latent=4)
model.train(
    max_epochs=2, batch_size=32, accelerator="cpu", devices=2, strategy="ddp",
    enable_progress_bar=False,
)
rank = os.environ.get("LOCAL_RANK", "0")
z = model.get_latent_representation()
epochs = len(model.history["train_loss"]) if rank == "0" else "-"  # rank 0 logs
sys.stdout.write(
    f"RANK {rank} epochs {epochs} finite {np.isfinite(z).all()} sum {z.sum():.5f}\\n"
)
sys.stdout.flush()
"""


@pytest.mark.slow
def test_ddp_two_cpu_processes_on_a_backed_file(tmp_path):
    atac = _atac(n_cells=256)
    del atac.layers["counts"]
    atac.write_h5ad(tmp_path / "atac.h5ad")
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "atac.h5ad")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    # the two ranks print concurrently into one pipe, so their lines may interleave
    reports = re.findall(r"RANK (\d) epochs (\S+) finite (True|False) sum (\S+)", res.stdout)
    assert sorted(rank for rank, *_ in reports) == ["0", "1"], res.stdout
    assert all(finite == "True" for _, _, finite, _ in reports)
    assert ("0", "2") in [(rank, epochs) for rank, epochs, *_ in reports]
    # gradients were averaged across the processes: both hold the same weights
    assert reports[0][3] == reports[1][3]
    assert "Starting with 2 processes" in res.stdout + res.stderr
