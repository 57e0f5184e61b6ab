"""MuData setup plumbing (scfound.models.base._mudata) on real CITE-seq data (PBMC 10k)."""

from __future__ import annotations

import os
from pathlib import Path

import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data

from scfound.models.base import (
    MODALITY_KINDS,
    MuDataSetupMixin,
    get_modality_matrix,
    get_modality_var_names,
    registered_modalities,
    validate_mudata,
)
from scfound.models.base._mudata import NORM_BINARY, NORM_CLR, NORM_LOG1P_CP10K, NORM_TFIDF

#: the project's shared data folder sits next to the repository (see its DATA.md)
PBMC = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "pbmc10k_cite.h5mu")
N_CELLS = 300

pytestmark = pytest.mark.skipif(not os.path.exists(PBMC), reason=f"needs {PBMC}")


# ---------------------------------------------------------------------------- toy model
class ToyModule(BaseModuleClass):
    """Predicts CLR proteins from log1p-CP10k RNA (normalised here, on the minibatch)."""

    def __init__(self, n_vars: int, n_proteins: int, n_latent: int = 4):
        super().__init__()
        self.encoder = torch.nn.Linear(n_vars, n_latent)
        self.decoder = torch.nn.Linear(n_latent, n_proteins)
        self.seen: list[dict[str, tuple]] = []

    def _get_inference_input(self, tensors, **kwargs):
        self.seen.append({k: (tuple(v.shape), v.dtype) for k, v in tensors.items()})
        return {"x": tensors[REGISTRY_KEYS.X_KEY]}

    @auto_move_data
    def inference(self, x):
        x = torch.log1p(x / x.sum(-1, keepdim=True).clamp(min=1) * 1e4)
        return {"z": self.encoder(x)}

    def _get_generative_input(self, tensors, inference_outputs, **kwargs):
        return {"z": inference_outputs["z"]}

    @auto_move_data
    def generative(self, z):
        return {"y": self.decoder(z)}

    def loss(self, tensors, inference_outputs, generative_outputs, **kwargs):
        y = torch.log1p(tensors[REGISTRY_KEYS.PROTEIN_EXP_KEY])
        y = y - y.mean(-1, keepdim=True)
        per_cell = ((generative_outputs["y"] - y) ** 2).sum(-1)
        return LossOutput(loss=per_cell.mean(), reconstruction_loss=per_cell)

    def sample(self, *args, **kwargs):
        raise NotImplementedError


class ToyCite(MuDataSetupMixin, UnsupervisedTrainingMixin, BaseModelClass):
    _required_modalities = ("rna", "protein")

    def __init__(self, mdata=None, registry=None, n_latent: int = 4):
        super().__init__(mdata, registry)
        ss = self.summary_stats
        self.module = ToyModule(ss.n_vars, ss.n_proteins, n_latent)
        self._model_summary_string = "ToyCite"
        self.init_params_ = self._get_init_params(locals())

    @classmethod
    def setup_mudata(
        cls,
        mdata,
        rna_layer: str | None = None,
        protein_layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        modalities: dict[str, str] | None = None,
        **kwargs,
    ):
        setup_method_args = cls._get_setup_method_args(**locals())
        cls._register_mudata(mdata, setup_method_args, modalities, **kwargs)


class ToyMultiome(MuDataSetupMixin, BaseModelClass):
    """Setup path only: any of RNA / protein / ATAC."""

    @classmethod
    def setup_mudata(
        cls,
        mdata,
        rna_layer: str | None = None,
        protein_layer: str | None = None,
        atac_layer: str | None = None,
        batch_key: str | None = None,
        modalities: dict[str, str] | None = None,
        **kwargs,
    ):
        setup_method_args = cls._get_setup_method_args(**locals())
        return cls._register_mudata(mdata, setup_method_args, modalities, **kwargs)

    def train(self):
        raise NotImplementedError


CITE_MODS = {"rna_layer": "rna", "protein_layer": "adt", "batch_key": "rna", "labels_key": "rna"}
CITE_ARGS = {"rna_layer": "counts", "protein_layer": "counts", "batch_key": "batch"}


# ---------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def pbmc_small() -> md.MuData:
    with md.set_options(pull_on_update=False):
        full = md.read_h5mu(PBMC)
    labelled = np.flatnonzero(full.mod["rna"].obs["cell_type"].notna().to_numpy())
    rng = np.random.default_rng(0)
    keep = np.sort(rng.choice(labelled, N_CELLS, replace=False))
    return full[keep].copy()


@pytest.fixture
def mdata(pbmc_small) -> md.MuData:
    return pbmc_small.copy()


def _snapshot(m: md.MuData) -> dict:
    out = {
        "mdata": {a: sorted(map(str, getattr(m, a).keys())) for a in ("obs", "var", "obsm", "uns")}
    }
    for name, mod in m.mod.items():
        out[name] = {
            a: sorted(map(str, getattr(mod, a).keys()))
            for a in ("obs", "var", "obsm", "varm", "layers", "uns")
        }
    return out


def _diff(before: dict, after: dict) -> dict:
    changes = {}
    for where, attrs in after.items():
        for attr, keys in attrs.items():
            added = set(keys) - set(before[where][attr])
            removed = set(before[where][attr]) - set(keys)
            if added or removed:
                changes[(where, attr)] = (sorted(added), sorted(removed))
    return changes


# ---------------------------------------------------------------------------- tests
def test_modality_kinds():
    assert {k: v.registry_key for k, v in MODALITY_KINDS.items()} == {
        "rna": REGISTRY_KEYS.X_KEY,
        "protein": REGISTRY_KEYS.PROTEIN_EXP_KEY,
        "atac": REGISTRY_KEYS.ATAC_X_KEY,
    }
    assert MODALITY_KINDS["rna"].default_normalization == NORM_LOG1P_CP10K
    assert MODALITY_KINDS["protein"].default_normalization == NORM_CLR
    assert MODALITY_KINDS["atac"].normalizations == (NORM_TFIDF, NORM_BINARY)
    assert MODALITY_KINDS["atac"].layer_arg == "atac_layer"
    assert MODALITY_KINDS["protein"].n_vars_key == "n_proteins"


def test_setup_registers_one_field_per_modality(mdata):
    ToyCite.setup_mudata(mdata, labels_key="cell_type", modalities=CITE_MODS, **CITE_ARGS)
    model = ToyCite(mdata)
    manager = model.adata_manager
    registry = manager.data_registry
    assert registry[REGISTRY_KEYS.X_KEY]["mod_key"] == "rna"
    assert registry[REGISTRY_KEYS.X_KEY]["attr_key"] == "counts"
    assert registry[REGISTRY_KEYS.PROTEIN_EXP_KEY]["mod_key"] == "adt"
    assert registry[REGISTRY_KEYS.BATCH_KEY]["mod_key"] == "rna"
    assert registry[REGISTRY_KEYS.LABELS_KEY]["mod_key"] == "rna"
    assert registered_modalities(manager) == {"rna": "rna", "protein": "adt"}
    ss = model.summary_stats
    assert (ss.n_vars, ss.n_proteins, ss.n_cells) == (4000, 14, N_CELLS)
    assert ss.n_batch == 1
    assert ss.n_labels == mdata.mod["rna"].obs["cell_type"].nunique()
    rna, adt = get_modality_matrix(manager, "rna"), get_modality_matrix(manager, "protein")
    assert rna.shape == (N_CELLS, 4000) and adt.shape == (N_CELLS, 14)
    assert get_modality_var_names(manager, "protein").equals(mdata.mod["adt"].var_names)
    assert get_modality_var_names(manager, "rna").equals(mdata.mod["rna"].var_names)
    with pytest.raises(KeyError, match="'atac' is not registered"):
        get_modality_matrix(manager, "atac")
    with pytest.raises(ValueError, match="unknown modality kind"):
        get_modality_matrix(manager, "methylation")


def test_registered_matrices_are_aligned_to_obs_names(mdata, pbmc_small):
    # shuffle the cells so that a positional mix-up cannot pass by accident
    order = np.random.default_rng(1).permutation(mdata.n_obs)
    mdata = mdata[order].copy()
    ToyCite.setup_mudata(mdata, modalities=CITE_MODS, **CITE_ARGS)
    manager = ToyCite(mdata).adata_manager
    rna = get_modality_matrix(manager, "rna", dense=True)
    adt = get_modality_matrix(manager, "protein", dense=True)
    names = mdata.obs_names
    ref = pbmc_small  # the un-shuffled object: look every cell up by name
    pos = ref.obs_names.get_indexer(names)
    np.testing.assert_array_equal(rna, ref.mod["rna"].layers["counts"][pos].toarray())
    np.testing.assert_array_equal(adt, ref.mod["adt"].layers["counts"][pos].toarray())
    assert np.all(adt.sum(1) > 0)  # proteins really are the ADT counts
    # the torch dataset that the stock loaders use gives the same rows
    batch = manager.create_torch_dataset()[[0, 7, 123]]
    np.testing.assert_array_equal(batch[REGISTRY_KEYS.X_KEY], rna[[0, 7, 123]])
    np.testing.assert_array_equal(batch[REGISTRY_KEYS.PROTEIN_EXP_KEY], adt[[0, 7, 123]])


def test_user_mudata_only_gains_scvi_registry_keys(mdata):
    before = _snapshot(mdata)
    rna_before = mdata.mod["rna"].layers["counts"].copy()
    adt_before = mdata.mod["adt"].layers["counts"].copy()
    obs_before = mdata.mod["rna"].obs.copy()
    ToyCite.setup_mudata(mdata, labels_key="cell_type", modalities=CITE_MODS, **CITE_ARGS)
    changes = _diff(before, _snapshot(mdata))
    assert changes, "scvi-tools registers something"
    for (where, attr), (added, removed) in changes.items():
        assert not removed, (where, attr, removed)
        assert all(k.startswith("_scvi_") for k in added), (where, attr, added)
    assert (mdata.mod["rna"].layers["counts"] != rna_before).nnz == 0
    assert (mdata.mod["adt"].layers["counts"] != adt_before).nnz == 0
    pd.testing.assert_frame_equal(mdata.mod["rna"].obs[obs_before.columns], obs_before)
    assert mdata.mod["rna"].X is not None and "X_log1p" not in mdata.mod["rna"].layers


def test_batch_and_labels_from_top_level_obs(mdata):
    mdata.obs["donor"] = pd.Categorical(["a", "b"] * (N_CELLS // 2))
    ToyCite.setup_mudata(
        mdata,
        batch_key="donor",
        modalities={"rna_layer": "rna", "protein_layer": "adt"},
        rna_layer="counts",
        protein_layer="counts",
    )
    manager = ToyCite(mdata).adata_manager
    assert manager.summary_stats.n_batch == 2
    assert "mod_key" not in manager.data_registry[REGISTRY_KEYS.BATCH_KEY]
    batch = manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY).ravel()
    np.testing.assert_array_equal(batch, np.tile([0, 1], N_CELLS // 2))


def test_train_one_epoch_with_stock_loaders(mdata):
    ToyCite.setup_mudata(mdata, modalities=CITE_MODS, **CITE_ARGS)
    model = ToyCite(mdata)
    model.train(
        max_epochs=1,
        batch_size=64,
        accelerator="cpu",
        check_val_every_n_epoch=1,
        enable_progress_bar=False,
    )
    assert model.is_trained
    assert np.isfinite(model.history["train_loss"].to_numpy(dtype=float)).all()
    assert np.isfinite(model.history["validation_loss"].to_numpy(dtype=float)).all()
    seen = model.module.seen[0]
    assert seen[REGISTRY_KEYS.X_KEY][0][1] == 4000
    assert seen[REGISTRY_KEYS.PROTEIN_EXP_KEY][0][1] == 14
    assert seen[REGISTRY_KEYS.PROTEIN_EXP_KEY][1] == torch.float32
    assert seen[REGISTRY_KEYS.BATCH_KEY][0][1] == 1


def test_setup_args_are_replayed_on_load(mdata, tmp_path):
    ToyCite.setup_mudata(mdata, labels_key="cell_type", modalities=CITE_MODS, **CITE_ARGS)
    model = ToyCite(mdata)
    model.save(tmp_path / "toy")
    loaded = ToyCite.load(tmp_path / "toy", adata=mdata.copy(), accelerator="cpu")
    assert registered_modalities(loaded.adata_manager) == {"rna": "rna", "protein": "adt"}
    assert loaded.summary_stats.n_proteins == 14


def test_rna_atac_and_optional_kinds():
    rng = np.random.default_rng(0)
    n = 40
    rna = AnnData(sp.csr_matrix(rng.poisson(1.0, (n, 30)).astype(np.float32)))
    atac = AnnData(sp.csr_matrix(rng.poisson(0.3, (n, 50)).astype(np.float32)))
    for a in (rna, atac):
        a.obs_names = [f"c{i}" for i in range(n)]
    atac.var_names = [f"chr1:{i * 500}-{i * 500 + 499}" for i in range(50)]
    mdata = md.MuData({"gex": rna, "peaks": atac})
    manager = ToyMultiome.setup_mudata(
        mdata, modalities={"rna_layer": "gex", "atac_layer": "peaks"}
    )
    assert registered_modalities(manager) == {"rna": "gex", "atac": "peaks"}
    assert manager.summary_stats.n_atac == 50 and manager.summary_stats.n_vars == 30
    assert REGISTRY_KEYS.PROTEIN_EXP_KEY not in manager.data_registry
    assert get_modality_var_names(manager, "atac")[0] == "chr1:0-499"
    # ATAC only
    mdata2 = md.MuData({"peaks": atac.copy()})
    manager2 = ToyMultiome.setup_mudata(mdata2, modalities={"atac_layer": "peaks"})
    assert registered_modalities(manager2) == {"atac": "peaks"}


# ---------------------------------------------------------------------------- bad input
def _setup(m, modalities=CITE_MODS, **kwargs):
    args = {**CITE_ARGS, **kwargs}
    ToyCite.setup_mudata(m, modalities=modalities, **args)


def _assert_untouched(m: md.MuData) -> None:
    assert "_scvi_uuid" not in m.uns
    for mod in m.mod.values():
        assert not any(str(c).startswith("_scvi_") for c in mod.obs.columns)


def test_error_anndata_passed(mdata):
    with pytest.raises(TypeError, match="expects a MuData, got an AnnData"):
        _setup(mdata.mod["rna"])


def test_error_missing_modality_lists_available(mdata):
    with pytest.raises(KeyError, match=r"no modality 'prot' \(available modalities: \[") as err:
        _setup(mdata, modalities={"rna_layer": "rna", "protein_layer": "prot"})
    assert "'rna'" in str(err.value) and "'adt'" in str(err.value)
    _assert_untouched(mdata)


def test_error_required_modality_not_mapped(mdata):
    with pytest.raises(ValueError, match="protein_layer"):
        _setup(mdata, modalities={"rna_layer": "rna"})
    with pytest.raises(ValueError, match="must be a dict"):
        _setup(mdata, modalities=None)
    with pytest.raises(ValueError, match="not arguments of setup_mudata"):
        _setup(mdata, modalities={**CITE_MODS, "atac_layer": "adt"})
    with pytest.raises(ValueError, match="mapped to both"):
        _setup(mdata, modalities={"rna_layer": "rna", "protein_layer": "rna"})
    _assert_untouched(mdata)


def test_error_missing_layer(mdata):
    with pytest.raises(KeyError, match=r"protein_layer='raw'.*available: \['counts'\]"):
        _setup(mdata, protein_layer="raw")
    _assert_untouched(mdata)


def test_error_nan_and_negative_counts(mdata):
    bad = mdata.copy()
    bad.mod["adt"].layers["counts"].data[3] = np.nan
    with pytest.raises(ValueError, match=r"mdata.mod\['adt'\].layers\['counts'\].*NaN"):
        _setup(bad)
    _assert_untouched(bad)
    bad = mdata.copy()
    bad.mod["rna"].layers["counts"].data[0] = -1.0
    with pytest.raises(ValueError, match=r"mdata.mod\['rna'\].*negative"):
        _setup(bad)


def test_error_cells_not_aligned(mdata):
    shuffled = mdata.copy()
    perm = np.random.default_rng(0).permutation(N_CELLS)
    shuffled.mod["adt"] = shuffled.mod["adt"][perm].copy()
    with pytest.raises(ValueError, match=r"not in the order of mdata.obs_names"):
        _setup(shuffled)
    unpaired = md.MuData({"rna": mdata.mod["rna"].copy(), "adt": mdata.mod["adt"][:200].copy()})
    with pytest.raises(ValueError, match="not shared across modalities"):
        _setup(unpaired)
    with pytest.raises(ValueError, match="is a view"):
        _setup(mdata[:100])


def test_error_obs_keys(mdata):
    with pytest.raises(KeyError, match=r"batch_key='donor'.*mdata.mod\['rna'\].obs"):
        _setup(mdata, batch_key="donor")
    with pytest.raises(KeyError, match="pass modalities"):
        _setup(mdata, modalities={"rna_layer": "rna", "protein_layer": "adt"})
    mdata.mod["rna"].obs["cell_type"] = mdata.mod["rna"].obs["cell_type"].astype(object)
    mdata.mod["rna"].obs.iloc[:3, mdata.mod["rna"].obs.columns.get_loc("cell_type")] = np.nan
    with pytest.raises(ValueError, match="3 missing values"):
        _setup(mdata, labels_key="cell_type")
    _assert_untouched(mdata)


def test_validate_mudata_standalone(mdata):
    before = _snapshot(mdata)
    out = validate_mudata(
        mdata,
        {"rna_layer": "rna", "protein_layer": "adt"},
        {"rna_layer": "counts", "protein_layer": None},
        required=("protein",),
    )
    assert out == {"rna": "rna", "protein": "adt"}
    assert _diff(before, _snapshot(mdata)) == {}
    with pytest.raises(ValueError, match="unknown modality kinds"):
        validate_mudata(mdata, {"rna_layer": "rna"}, {"rna_layer": None}, required=("dna",))


def test_setup_anndata_points_to_setup_mudata(mdata):
    with pytest.raises(TypeError, match="setup_mudata"):
        ToyCite.setup_anndata(mdata.mod["rna"])
