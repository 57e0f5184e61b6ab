"""Model files never run code, corrupt folders give clear errors, failing loads change nothing.

Every entry point of every public scfound model that reads a path is exercised with crafted
folders whose pickles would write a marker file when unpickled, and with corrupt or incomplete
folders; a walk over the scvi-tools methods the models inherit makes sure a new entry point (or a
new model) cannot be added without an override and a row in :data:`CALLS`.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import json
import os
import pickle
import pkgutil
import shutil
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from anndata import AnnData
from mudata import MuData
from scvi.model.base import BaseModelClass

import scfound as sf
from scfound.models.base import ModelFileError
from scfound.models.cellplm import export_authors_checkpoint

SRC = Path(sf.__file__).parent
MODEL_CLASSES = (
    sf.SpaFormer,
    sf.CellPLM,
    sf.STAI,
    sf.ScMoGNN,
    sf.SAILER,
    sf.ExpressionTransformer,
    sf.ScMoFormer,
    sf.SAILERX,
)


# --------------------------------------------------------------------------- crafted files
class Exploit:
    """Unpickling this creates the folder ``marker`` (``os.mkdir``): proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def write_exploit(path: Path, marker: Path, kind: str = "torch") -> None:
    """A model file that runs code when unpickled: torch's zip format, plain pickle, scvi dict."""
    if kind == "torch":
        torch.save({"w": torch.zeros(1), "payload": Exploit(marker)}, path)
    elif kind == "pickle":
        with open(path, "wb") as fh:
            pickle.dump(Exploit(marker), fh)
    elif kind == "scvi":  # layout of a scvi-tools save, with a payload in attr_dict
        torch.save(
            {
                "model_state_dict": {"w": torch.zeros(1)},
                "var_names": np.array(["a"]),
                "attr_dict": {"registry_": Exploit(marker)},
            },
            path,
        )
    else:
        raise ValueError(kind)


@pytest.mark.parametrize("kind", ["torch", "pickle", "scvi"])
def test_crafted_files_do_run_code_when_unpickled(tmp_path, kind):
    """Sanity: the crafted files are dangerous, so the tests below mean something."""
    marker = tmp_path / "marker"
    write_exploit(tmp_path / "model.pt", marker, kind)
    try:
        torch.load(tmp_path / "model.pt", weights_only=False)
    except RuntimeError:  # a bare pickle is not a torch file, but it was unpickled first
        assert kind == "pickle"
    assert marker.exists()


# --------------------------------------------------------------------------- fixtures
def _counts(n_cells: int, genes: list[str], seed: int) -> AnnData:
    rng = np.random.default_rng(seed)
    X = sp.random(n_cells, len(genes), density=0.4, format="csr", random_state=rng)
    X.data = np.ceil(X.data * 10).astype(np.float32)
    return AnnData(X.astype(np.float32), var=pd.DataFrame(index=genes))


def _spaformer_data() -> tuple[AnnData, ...]:
    return (sf.datasets.synthetic_spatial(240, 20, 4, seed=0, n_fovs=2),)


def _cellplm_data() -> tuple[AnnData, ...]:
    spatial = sf.datasets.synthetic_spatial(240, 20, 4, seed=0, n_fovs=2)
    rna = _counts(150, [f"gene_{i}" for i in range(10, 40)], seed=1)
    rna.obs["sample"] = np.repeat(["a", "b", "c"], 50)
    corpus = sf.pp.build_corpus(
        {"spatial": spatial, "rna": rna},
        layer={"spatial": "counts"},
        group_key={"spatial": "fov", "rna": "sample"},
    )
    return (corpus,)


def _stai_data() -> tuple[AnnData, ...]:
    data = sf.datasets.synthetic_spatial(600, 30, 4, seed=0, n_fovs=2)
    data.obs["fov"] = data.obs["fov"].astype(str)
    is_ref = np.random.default_rng(0).random(data.n_obs) < 0.5
    spatial = data[~is_ref, :20].copy()
    reference = data[is_ref].copy()
    del reference.obsm["spatial"]
    return spatial, reference


def _scmognn_data() -> tuple[MuData, ...]:
    rna = _counts(60, [f"gene_{i}" for i in range(12)], seed=2)
    adt = _counts(60, [f"prot_{i}" for i in range(4)], seed=3)
    adt.obs_names = rna.obs_names
    rna.layers["counts"], adt.layers["counts"] = rna.X.copy(), adt.X.copy()
    return (MuData({"rna": rna, "adt": adt}),)


def _sailer_data() -> tuple[AnnData, ...]:
    atac = _counts(80, [f"chr1_{i}" for i in range(30)], seed=4)
    atac.obs["batch"] = np.repeat(["a", "b"], 40)
    atac.layers["counts"] = atac.X.copy()
    return (atac,)


def _sailerx_data() -> tuple[MuData, ...]:
    atac = _counts(60, [f"chr{1 + i % 2}:{100 * i}-{100 * i + 50}" for i in range(20)], seed=6)
    rna = _counts(60, [f"gene_{i}" for i in range(12)], seed=7)
    rna.obs_names = atac.obs_names
    atac.layers["counts"], rna.layers["counts"] = atac.X.copy(), rna.X.copy()
    return (MuData({"atac": atac, "rna": rna}),)


def _exprformer_data() -> tuple[AnnData, ...]:
    rna = _counts(40, [f"gene_{i}" for i in range(15)], seed=5)
    counts = rna.X.toarray()
    counts[:, 0] += 1  # every cell has a non-zero gene
    rna.X = sp.csr_matrix(counts)
    rna.layers["counts"] = rna.X.copy()
    return (rna,)


def _build(cls: type, data: tuple[AnnData, ...], small: bool = True) -> BaseModelClass:
    """An untrained model of ``cls`` on ``data`` (set up here); ``small=False``: other shapes."""
    if cls is sf.SpaFormer:
        cls.setup_anndata(data[0], layer="counts", group_key="fov")
        return cls(data[0], n_hidden=16 if small else 32, n_heads=2, n_latent=4)
    if cls is sf.ScMoGNN:
        modalities = {"rna_layer": "rna", "protein_layer": "adt"}
        cls.setup_mudata(data[0], rna_layer="counts", protein_layer="counts", modalities=modalities)
        return cls(data[0], n_hidden=16 if small else 32, n_layers=1, n_cell_features=4)
    if cls is sf.ScMoFormer:
        modalities = {"rna_layer": "rna", "protein_layer": "adt"}
        cls.setup_mudata(data[0], rna_layer="counts", protein_layer="counts", modalities=modalities)
        symbols = {f"prot_{i}": f"gene_{i}" for i in range(4)}
        hidden = 16 if small else 32
        return cls(data[0], n_hidden=hidden, n_heads=2, n_layers=1, protein_symbols=symbols)
    if cls is sf.SAILER:
        cls.setup_anndata(data[0], layer="counts", batch_key="batch")
        return cls(data[0], n_hidden=(16,) if small else (32,), n_latent=4)
    if cls is sf.SAILERX:
        modalities = {"atac": "atac", "rna": "rna"}
        cls.setup_mudata(data[0], atac_layer="counts", rna_layer="counts", modalities=modalities)
        return cls(data[0], n_hidden=(8, 4) if small else (16, 4), n_latent=4, n_rna_pcs=5)
    if cls is sf.ExpressionTransformer:
        cls.setup_anndata(data[0], layer="counts")
        return cls(data[0], n_hidden=16 if small else 32, n_layers=1)
    if cls is sf.CellPLM:
        cls.setup_anndata(data[0], group_key="sample", dataset_key="dataset", spatial_key="spatial")
        hidden = 16 if small else 32
        return cls(data[0], n_hidden=hidden, n_heads=2, n_layers=1, n_latent=8, n_decoder_hidden=16)
    cls.setup_anndata(data[0], layer="counts", spatial_key="spatial", group_key="fov")
    cls.setup_anndata(data[1], layer="counts", labels_key="cell_type")
    return cls(data[0], data[1], n_hidden=16 if small else 32, n_folds=3, mmd_cells=128)


DATA: dict[type, Callable[[], tuple[AnnData, ...]]] = {
    sf.SpaFormer: _spaformer_data,
    sf.CellPLM: _cellplm_data,
    sf.STAI: _stai_data,
    sf.ScMoGNN: _scmognn_data,
    sf.SAILER: _sailer_data,
    sf.ExpressionTransformer: _exprformer_data,
    sf.ScMoFormer: _scmognn_data,
    sf.SAILERX: _sailerx_data,
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[type, dict[str, Path]]:
    """For each class: a valid save (``ok``) and one of a wider model (``wide``)."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cls in MODEL_CLASSES:
            root = tmp_path_factory.mktemp(cls.__name__)
            _build(cls, DATA[cls]()).save(str(root / "ok"))
            _build(cls, DATA[cls](), small=False).save(str(root / "wide"))
            out[cls] = {"ok": root / "ok", "wide": root / "wide"}
    return out


@pytest.fixture(scope="module")
def pristine() -> dict[type, tuple[AnnData, ...]]:
    """Data of each class never set up; tests load onto copies of it."""
    return {cls: DATA[cls]() for cls in MODEL_CLASSES}


def fresh(pristine, cls) -> tuple[AnnData, ...]:
    return tuple(a.copy() for a in pristine[cls])


def fingerprint(adata: AnnData | MuData) -> dict:
    """What a load may write into an AnnData (each modality of a MuData): columns, entries."""
    if isinstance(adata, MuData):
        mods = {name: fingerprint(mod) for name, mod in adata.mod.items()}
        return {"mod": mods, "obs": list(adata.obs.columns), "uns": sorted(adata.uns.keys())}

    def digest(frame: pd.DataFrame) -> list:
        return [
            (
                c,
                str(frame[c].dtype),
                hashlib.sha1("\0".join(frame[c].astype(str)).encode()).digest(),
            )
            for c in frame.columns
        ]

    return {
        "obs": digest(adata.obs),
        "var": digest(adata.var),
        "uns": {k: repr(v) if isinstance(v, str) else id(v) for k, v in adata.uns.items()},
        "layers": {k: id(v) for k, v in adata.layers.items()},
        "obsm": {k: id(v) for k, v in adata.obsm.items()},
        "varm": {k: id(v) for k, v in adata.varm.items()},
        "obsp": sorted(adata.obsp.keys()),
        "X": id(adata.X),
    }


@pytest.fixture
def no_unsafe_torch_load(monkeypatch):
    """Fail any ``torch.load`` without ``weights_only=True`` (scvi-tools passes False)."""
    real = torch.load

    def guarded(*args, **kwargs):
        if kwargs.get("weights_only") is not True:
            raise AssertionError(
                f"torch.load called with weights_only={kwargs.get('weights_only')}"
            )
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", guarded)


# ------------------------------------------------------------------ entry points that read
def _load(cls, path, data):
    return cls.load(str(path), *data)


def _convert(cls, path, data):
    return cls.convert_legacy_save(str(path), str(Path(path).parent / "converted"))


#: every public entry point that reads a model path, called as a user would; the walk below
#: fails when a model gains (or inherits) one that is not listed here
CALLS: dict[str, Callable] = {
    "load": _load,
    "load_registry": lambda cls, path, data: cls.load_registry(str(path)),
    "view_setup_args": lambda cls, path, data: cls.view_setup_args(str(path)),
    "convert_legacy_save": _convert,
}
#: entry points of one class (besides CALLS) that read paths, checked separately below
OWN_CALLS = {sf.CellPLM: {"load_pretrained"}}

#: names whose presence in a method's source means it reads model files unsafely
UNSAFE_READERS = (
    "_load_saved_files",
    "_load_legacy_saved_files",
    "torch.load",
    "pickle.load",
    "read_pickle",
)


def _public_model_classes() -> set[type]:
    classes = set()
    for info in pkgutil.walk_packages(sf.models.__path__, "scfound.models."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseModelClass)
                and obj.__module__.startswith("scfound")
                and not name.startswith("_")
            ):
                classes.add(obj)
    return classes


def _scvi_path_readers(cls: type) -> set[str]:
    """Names of methods ``cls`` gets from scvi-tools that read model files (transitively)."""
    sources = {}
    for klass in cls.__mro__:
        if not klass.__module__.startswith("scvi"):
            continue
        for name, attr in vars(klass).items():
            func = getattr(attr, "__func__", attr)
            if inspect.isfunction(func) and name not in sources:
                try:
                    sources[name] = inspect.getsource(func)
                except (OSError, TypeError):
                    continue
    readers: set[str] = set()
    markers = list(UNSAFE_READERS)
    while True:
        new = {
            name
            for name, src in sources.items()
            if name not in readers and any(m in src for m in markers)
        }
        if not new:
            return readers
        readers |= new
        markers += [f".{name}(" for name in new]


def test_every_public_model_class_is_covered():
    assert _public_model_classes() == set(MODEL_CLASSES)


@pytest.mark.parametrize("cls", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_no_inherited_scvi_method_reads_model_files(cls):
    readers = _scvi_path_readers(cls)
    # the walk finds the entry points known today (guards the walk itself)
    assert {"load", "load_registry", "view_setup_args", "convert_legacy_save"} <= readers
    for name in readers:
        owner = next(k for k in cls.__mro__ if name in vars(k))
        assert owner.__module__.startswith("scfound"), (
            f"{cls.__name__}.{name} is scvi-tools' (from {owner.__name__}), which unpickles "
            "model files: override it in SafeSaveMixin (models/base/_save.py)."
        )
        assert name in CALLS, f"add {name} to CALLS in this module so that it is exercised."


def test_scfound_never_unpickles():
    """Every ``torch.load`` in scfound passes ``weights_only=True``; no pickle readers."""
    bad = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            where = f"{path.relative_to(SRC)}:{node.lineno} {name}"
            if name.endswith(("pickle.load", "pickle.loads", "read_pickle", "joblib.load")):
                bad.append(where)
            if name == "torch.load" and not any(
                k.arg == "weights_only"
                and isinstance(k.value, ast.Constant)
                and k.value.value is True
                for k in node.keywords
            ):
                bad.append(where + " without weights_only=True")
            if name.endswith("np.load") and any(k.arg == "allow_pickle" for k in node.keywords):
                bad.append(where + " with allow_pickle")
    assert not bad, bad


# --------------------------------------------------------------------------- crafted folders
def _crafted(kind: str, saved_ok: Path, root: Path, marker: Path) -> Path:
    folder = root / kind
    folder.mkdir()
    if kind == "pickle_only":  # an scvi-tools-like folder: model.pt alone
        write_exploit(folder / "model.pt", marker, "scvi")
    elif kind == "torch_exploit":  # valid settings next to a crafted weights file
        shutil.copy(saved_ok / "model.json", folder / "model.json")
        write_exploit(folder / "model.pt", marker, "torch")
    elif kind == "raw_pickle_exploit":
        shutil.copy(saved_ok / "model.json", folder / "model.json")
        write_exploit(folder / "model.pt", marker, "pickle")
    elif kind == "legacy":  # a scvi-tools save from before v0.15
        write_exploit(folder / "model_params.pt", marker, "torch")
        with open(folder / "attr.pkl", "wb") as fh:
            pickle.dump(Exploit(marker), fh)
        (folder / "var_names.csv").write_text("a,b\n")
    return folder


CRAFTED = ["pickle_only", "torch_exploit", "raw_pickle_exploit", "legacy"]


@pytest.mark.usefixtures("no_unsafe_torch_load")
@pytest.mark.parametrize("kind", CRAFTED)
@pytest.mark.parametrize("entry", sorted(CALLS))
@pytest.mark.parametrize("cls", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_crafted_folders_run_no_code(cls, entry, kind, saved, pristine, tmp_path, capsys):
    marker = tmp_path / "marker"
    folder = _crafted(kind, saved[cls]["ok"], tmp_path, marker)
    data = fresh(pristine, cls)
    before = [fingerprint(a) for a in data]
    reads_json_only = (
        entry in ("load_registry", "view_setup_args") and (folder / "model.json").exists()
    )
    if reads_json_only:  # these read the JSON settings alone and succeed
        CALLS[entry](cls, folder, data)
    else:
        expected = NotImplementedError if entry == "convert_legacy_save" else ModelFileError
        with pytest.raises(expected) as info:
            CALLS[entry](cls, folder, data)
        message = str(info.value)
        assert str(folder) in message
        assert "weights_only=False" not in "".join(traceback.format_exception(info.value))
    assert not marker.exists()
    assert [fingerprint(a) for a in data] == before
    assert not (tmp_path / "converted").exists()


@pytest.mark.usefixtures("no_unsafe_torch_load")
@pytest.mark.parametrize("target", ["config", "weights"])
def test_load_pretrained_runs_no_code(saved, pristine, tmp_path, target):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _build(sf.CellPLM, DATA[sf.CellPLM]())
    prefix = tmp_path / "ckpt"
    export_authors_checkpoint(model, str(prefix))
    marker = tmp_path / "marker"
    if target == "weights":
        write_exploit(tmp_path / "ckpt.best.ckpt", marker, "torch")
    else:  # a config that is a pickle
        with open(tmp_path / "ckpt.config.json", "wb") as fh:
            pickle.dump(Exploit(marker), fh)
    (adata,) = fresh(pristine, sf.CellPLM)
    sf.CellPLM.setup_anndata(adata, group_key="sample", dataset_key="dataset")
    before = fingerprint(adata)
    with pytest.raises(ModelFileError, match="ckpt") as info:
        sf.CellPLM.load_pretrained(str(prefix), adata)
    assert "weights_only=False" not in "".join(traceback.format_exception(info.value))
    assert not marker.exists()
    assert fingerprint(adata) == before


# --------------------------------------------------------------------------- corrupt folders
def _corrupt(kind: str, cls: type, saved: dict[str, Path], root: Path) -> tuple[Path, str]:
    """A broken copy of a valid save, and a pattern the error message must match."""
    folder = root / "broken"
    ok = saved["ok"]
    if kind == "missing_folder":
        return folder, "does not exist"
    shutil.copytree(ok, folder)
    meta, weights = folder / "model.json", folder / "model.pt"
    if kind == "not_json":
        meta.write_text('{"model_class": "')
        return folder, "not valid JSON"
    if kind == "not_utf8":
        meta.write_bytes(b'{"model_class": "\xff\xfe"}')
        return folder, "not UTF-8"
    if kind == "json_list":
        meta.write_text("[1, 2]")
        return folder, "not an object"
    if kind == "other_class":
        other = next(c for c in MODEL_CLASSES if c is not cls).__name__
        content = json.loads(meta.read_text())
        meta.write_text(json.dumps({**content, "model_class": other}))
        return folder, f"holds a {other} model, not a {cls.__name__}"
    if kind == "no_class":
        content = json.loads(meta.read_text())
        del content["model_class"]
        meta.write_text(json.dumps(content))
        return folder, "does not name the model class"
    if kind == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        return folder, "model.pt is not a valid scfound model weights file"
    if kind == "garbage_weights":
        weights.write_bytes(b"this is not a model" * 10)
        return folder, "model.pt is not a valid scfound model weights file"
    if kind == "not_a_state_dict":
        torch.save([1, 2, 3], weights)
        return folder, "does not hold a state dict"
    if kind == "no_weights":
        weights.unlink()
        return folder, "model.pt does not exist"
    if kind == "no_meta":
        meta.unlink()
        return folder, "no model.json"
    if kind == "empty_folder":
        for path in folder.iterdir():  # model.json, model.pt and any extra file (a vocabulary)
            path.unlink()
        return folder, "no model.json .*empty"
    if kind == "wrong_shapes":  # weights of a wider model of the same class
        shutil.copy(saved["wide"] / "model.pt", weights)
        return folder, "does not fit the .* shapes differ"
    if kind == "missing_parameter":
        state = torch.load(weights, weights_only=True)
        state.pop(next(iter(state)))
        torch.save(state, weights)
        return folder, "parameters missing"
    raise ValueError(kind)


CORRUPT = [
    "missing_folder",
    "not_json",
    "not_utf8",
    "json_list",
    "other_class",
    "no_class",
    "truncated_weights",
    "garbage_weights",
    "not_a_state_dict",
    "no_weights",
    "no_meta",
    "empty_folder",
    "wrong_shapes",
    "missing_parameter",
]
#: corruptions that only ``load`` sees (it alone reads the weights)
WEIGHTS_ONLY = {
    "truncated_weights",
    "garbage_weights",
    "not_a_state_dict",
    "no_weights",
    "wrong_shapes",
    "missing_parameter",
}


@pytest.mark.usefixtures("no_unsafe_torch_load")
@pytest.mark.parametrize("kind", CORRUPT)
@pytest.mark.parametrize("cls", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_corrupt_folder_load_is_clear_and_changes_nothing(cls, kind, saved, pristine, tmp_path):
    folder, pattern = _corrupt(kind, cls, saved[cls], tmp_path)
    data = fresh(pristine, cls)
    before = [fingerprint(a) for a in data]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ModelFileError, match=pattern) as info:
            cls.load(str(folder), *data)
    assert str(folder) in str(info.value)
    assert "weights_only=False" not in "".join(traceback.format_exception(info.value))
    assert [fingerprint(a) for a in data] == before
    assert all("_scvi_uuid" not in a.uns for a in data)


@pytest.mark.parametrize("kind", sorted(set(CORRUPT) - WEIGHTS_ONLY))
@pytest.mark.parametrize("cls", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_corrupt_folder_registry_is_clear(cls, kind, saved, tmp_path):
    folder, pattern = _corrupt(kind, cls, saved[cls], tmp_path)
    for entry in ("load_registry", "view_setup_args"):
        with pytest.raises(ModelFileError, match=pattern) as info:
            CALLS[entry](cls, folder, ())
        assert str(folder) in str(info.value)


def test_missing_folder_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sf.SpaFormer.load_registry(str(tmp_path / "nothing"))


# --------------------------------------------------------------------------- valid folders
@pytest.mark.parametrize("cls", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_registry_and_setup_args_are_read_from_json(cls, saved, capsys, no_unsafe_torch_load):
    registry = cls.load_registry(str(saved[cls]["ok"]))
    cls.view_setup_args(str(saved[cls]["ok"]))
    printed = capsys.readouterr().out
    if cls is sf.STAI:
        assert set(registry) == {"spatial", "reference"}
        assert registry["reference"]["setup_args"]["labels_key"] == "cell_type"
        assert "spatial AnnData" in printed and "reference AnnData" in printed
    elif cls in (sf.ScMoGNN, sf.ScMoFormer):
        assert registry["model_name"] == cls.__name__
        assert registry["setup_args"]["modalities"]["protein_layer"] == "adt"
    elif cls is sf.SAILERX:
        assert registry["model_name"] == cls.__name__
        assert registry["setup_args"]["modalities"] == {"atac": "atac", "rna": "rna"}
    elif cls is sf.SAILER:
        assert registry["model_name"] == cls.__name__
        assert registry["setup_args"]["batch_key"] == "batch"
    elif cls is sf.ExpressionTransformer:
        assert registry["model_name"] == cls.__name__
        assert registry["setup_args"]["layer"] == "counts"
    else:
        assert registry["model_name"] == cls.__name__
        assert registry["setup_args"]["group_key"] in ("fov", "sample")
    setup = "setup_mudata" if cls in (sf.ScMoGNN, sf.ScMoFormer, sf.SAILERX) else "setup_anndata"
    assert f"{cls.__name__}.{setup}" in printed
    with pytest.raises(ValueError, match="without a file prefix"):
        cls.load_registry(str(saved[cls]["ok"]), prefix="x_")


@pytest.mark.parametrize("cls", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_valid_folder_still_loads(cls, saved, pristine, no_unsafe_torch_load):
    data = fresh(pristine, cls)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = cls.load(str(saved[cls]["ok"]), *data)
    assert type(model) is cls and model.adata is data[0]
    assert all("_scvi_uuid" in a.uns for a in data)


# ---------------------------------------------------------------- nothing half-written
@pytest.mark.parametrize("cls", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_failing_load_keeps_an_existing_setup(cls, saved, pristine, tmp_path):
    """An AnnData the user had set up keeps its registration when a load fails late."""
    folder, _ = _corrupt("wrong_shapes", cls, saved[cls], tmp_path)
    data = fresh(pristine, cls)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _build(cls, data)  # sets the data up (and registers managers)
    managers = [cls._get_most_recent_anndata_manager(a) for a in data]
    before = [fingerprint(a) for a in data]
    store = dict(cls._setup_adata_manager_store)
    instances = set(cls._per_instance_manager_store)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ModelFileError, match="shapes differ"):
            cls.load(str(folder), *data)
    assert [fingerprint(a) for a in data] == before
    assert [cls._get_most_recent_anndata_manager(a) for a in data] == managers
    assert cls._setup_adata_manager_store == store
    assert set(cls._per_instance_manager_store) == instances


def test_stai_failing_reference_setup_rolls_back_the_spatial_data(saved, pristine):
    """The spatial AnnData is set up first; the reference then fails (no labels column)."""
    spatial, reference = fresh(pristine, sf.STAI)
    del reference.obs["cell_type"]
    before = [fingerprint(spatial), fingerprint(reference)]
    with pytest.raises(KeyError, match="cell_type"):
        sf.STAI.load(str(saved[sf.STAI]["ok"]), spatial, reference)
    assert [fingerprint(spatial), fingerprint(reference)] == before
    assert "_scvi_uuid" not in spatial.uns


@pytest.mark.parametrize("cls", [sf.SpaFormer, sf.CellPLM], ids=lambda c: c.__name__)
def test_failing_setup_from_saved_args_changes_nothing(cls, saved, pristine):
    """The user's data lacks what the saved setup needs: a clear error, nothing written."""
    (adata,) = fresh(pristine, cls)
    key = "fov" if cls is sf.SpaFormer else "sample"
    del adata.obs[key]
    before = fingerprint(adata)
    with pytest.raises((KeyError, ValueError), match=key):
        cls.load(str(saved[cls]["ok"]), adata)
    assert fingerprint(adata) == before


def test_failing_save_leaves_no_half_written_folder(saved, pristine, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _build(sf.SpaFormer, fresh(pristine, sf.SpaFormer))
    model.init_params_["non_kwargs"]["bad"] = object()  # not JSON-encodable
    with pytest.raises(TypeError, match="cannot store object"):
        model.save(str(tmp_path / "m"))
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_restore_on_error_undoes_anndata_and_mudata_changes():
    import mudata as md

    from scfound.models.base._save import restore_on_error

    rna, adt = _counts(30, ["a", "b", "c"], seed=0), _counts(30, ["p", "q"], seed=1)
    adt.obs_names = rna.obs_names
    rna.obs["kind"] = pd.Categorical(["x", "y"] * 15)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mdata = md.MuData({"rna": rna, "adt": adt})
    mdata.uns["kept"] = {"a": 1}
    before = [fingerprint(rna), fingerprint(adt), mdata.obs.columns.tolist(), dict(mdata.uns)]
    X = rna.X
    with pytest.raises(RuntimeError, match="late failure"):
        with restore_on_error(sf.SpaFormer, mdata):
            rna.obs["_scvi_batch"] = 0
            rna.obs["kind"] = rna.obs["kind"].cat.add_categories("z")
            rna.layers["new"] = rna.X
            rna.X = rna.X * 2
            adt.obsm["extra"] = np.zeros((30, 1))
            mdata.obs["_scvi_labels"] = 1
            mdata.uns["_scvi_uuid"] = "u"
            mdata.uns["kept"] = {}
            sf.SpaFormer._setup_adata_manager_store["u"] = object()
            raise RuntimeError("late failure")
    assert rna.X is X
    after = [fingerprint(rna), fingerprint(adt), mdata.obs.columns.tolist(), dict(mdata.uns)]
    assert after == before
    assert "u" not in sf.SpaFormer._setup_adata_manager_store
