"""Saving and loading that cannot run code: tensors with ``weights_only=True``, the rest as JSON.

scvi-tools' own :meth:`~scvi.model.base.BaseModelClass.load` unpickles the whole model file
(``torch.load(weights_only=False)``), so a model file from an untrusted source can execute code.
scfound models store the module weights alone (``model.pt``, read with ``weights_only=True``) and
the registry, init parameters, gene names and training history as JSON (``model.json``).

Every inherited scvi-tools entry point that would read a model folder with pickle
(:meth:`~scvi.model.base.BaseModelClass.load_registry`,
:meth:`~scvi.model.base.BaseModelClass.view_setup_args`,
:meth:`~scvi.model.base.BaseModelClass.convert_legacy_save`) is replaced here: it reads the JSON
file or refuses with a message that says what to use instead. A folder that is corrupt, incomplete
or of another model class gives a :class:`ModelFileError` naming the folder and the problem, and a
failing :meth:`SafeSaveMixin.load` leaves the caller's AnnData as it was (see
:func:`restore_on_error`).
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData, read_h5ad

from scfound._validate import check_anndata, check_cells_and_genes

WEIGHTS_FILE = "model.pt"
META_FILE = "model.json"
ADATA_FILE = "adata.h5ad"
#: the registered MuData of a model set up with ``setup_mudata``
MDATA_FILE = "mdata.h5mu"

#: entries of ``model.json`` that :meth:`SafeSaveMixin.load` needs
META_KEYS = ("var_names", "registry", "init_params", "is_trained", "history")


class ModelFileError(ValueError):
    """A model folder or file that scfound cannot read (corrupt, incomplete, another model)."""


class ModelFileNotFoundError(ModelFileError, FileNotFoundError):
    """A model folder, or a file it should hold, does not exist."""


def _encode(obj: Any) -> Any:
    """JSON-encodable form of registries and init parameters (arrays keep their dtype)."""
    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_encode(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": _encode(obj.tolist()), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, pd.DataFrame):
        return {"__dataframe__": _encode(obj.to_dict(orient="split"))}
    if isinstance(obj, pd.Index):
        return _encode(obj.to_numpy())
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a model file.")


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            dtype = obj["dtype"]
            return np.asarray(obj["__ndarray__"], dtype=object if dtype == "object" else dtype)
        if "__dataframe__" in obj:
            split = _decode(obj["__dataframe__"])
            return pd.DataFrame(split["data"], index=split["index"], columns=split["columns"])
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def check_genes(genes, expected) -> None:
    """Raise a clear error when ``genes`` are not exactly ``expected`` in the same order."""
    genes, expected = (
        np.asarray(genes).astype(str).tolist(),
        np.asarray(expected).astype(str).tolist(),
    )
    if genes == expected:
        return
    have, want = set(genes), set(expected)
    missing = [g for g in expected if g not in have]
    extra = [g for g in genes if g not in want]
    detail = []
    if missing:
        detail.append(
            f"{len(missing)} model genes missing from adata.var_names (e.g. {missing[:5]})"
        )
    if extra:
        detail.append(f"{len(extra)} genes the model does not know (e.g. {extra[:5]})")
    if not detail:
        detail.append("same genes in another order; reorder with adata[:, model_genes]")
    raise ValueError("genes of adata do not match the trained model: " + "; ".join(detail) + ".")


def write_model(dir_path: str, model: Any, meta: dict[str, Any], overwrite: bool) -> None:
    """Write ``model.module``'s weights and ``meta`` (plus the class name) to ``dir_path``.

    ``meta`` is encoded before anything is written, and each file is written to a temporary name
    and then renamed, so a failing save leaves no partly written file behind.
    """
    dir_path = os.fspath(dir_path)
    if os.path.exists(os.path.join(dir_path, META_FILE)) and not overwrite:
        raise ValueError(f"{dir_path} already holds a model; pass overwrite=True to replace it.")
    text = json.dumps(_encode({"model_class": type(model).__name__, **meta}))
    os.makedirs(dir_path, exist_ok=True)
    weights, meta_file = os.path.join(dir_path, WEIGHTS_FILE), os.path.join(dir_path, META_FILE)
    try:
        torch.save(model.module.state_dict(), weights + ".tmp")
        with open(meta_file + ".tmp", "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(weights + ".tmp", weights)
        os.replace(meta_file + ".tmp", meta_file)
    finally:
        for tmp in (weights + ".tmp", meta_file + ".tmp"):
            if os.path.exists(tmp):
                os.remove(tmp)


def _invalid(dir_path: str, problem: str) -> ModelFileError:
    return ModelFileError(f"{dir_path} is not a valid scfound model folder: {problem}.")


def _model_folder(dir_path: str | os.PathLike) -> str:
    """``dir_path`` as a string, checked to be an existing folder."""
    dir_path = os.fspath(dir_path)
    if not os.path.exists(dir_path):
        raise ModelFileNotFoundError(f"model folder {dir_path} does not exist.")
    if not os.path.isdir(dir_path):
        raise ModelFileError(
            f"{dir_path} is a file, not a model folder: pass the folder given to `save`."
        )
    return dir_path


def check_prefix(prefix: str | None) -> None:
    """Refuse a file ``prefix``: scfound models are saved as a folder without one."""
    if prefix:
        raise ValueError(
            f"prefix={prefix!r}: scfound models are saved without a file prefix; pass the "
            "folder given to `save`."
        )


def read_json_file(path: str, what: str) -> Any:
    """The content of the JSON file ``path``, with a clear error naming ``what`` it should be."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise ModelFileNotFoundError(f"{what} {path} does not exist.") from None
    except IsADirectoryError:
        raise ModelFileError(f"{what} {path} is a folder, not a file.") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ModelFileError(
            f"{what} {path} is not UTF-8 text (invalid byte at position {err.start}); the file "
            "is corrupt or not the file expected."
        ) from None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        detail = (
            f"{err.msg} at line {err.lineno}, column {err.colno}"
            if isinstance(err, json.JSONDecodeError)
            else "nested too deeply"
        )
        raise ModelFileError(
            f"{what} {path} is not valid JSON ({detail}); the file is corrupt or truncated."
        ) from None


def read_model_meta(
    dir_path: str | os.PathLike, class_name: str, keys: Sequence[str] = ()
) -> dict[str, Any]:
    """The settings written by :func:`write_model`, checked to belong to ``class_name``.

    Parameters
    ----------
    dir_path
        Model folder.
    class_name
        Name of the model class that should have written it.
    keys
        Entries the settings must hold.

    Returns
    -------
    The decoded settings.

    Raises
    ------
    ModelFileError
        When the folder or its ``model.json`` is missing, is not UTF-8 JSON, lacks an entry,
        or belongs to another model class.

    """
    dir_path = _model_folder(dir_path)
    path = os.path.join(dir_path, META_FILE)
    if not os.path.exists(path):
        present = sorted(os.listdir(dir_path))
        hint = (
            f" (it holds {', '.join(present[:5])}{', ...' if len(present) > 5 else ''})"
            if present
            else " (it is empty)"
        )
        raise ModelFileNotFoundError(
            f"{dir_path} is not a scfound model folder: it has no {META_FILE}{hint}. scfound "
            f"models are written by `{class_name}.save`; files of other tools (e.g. a "
            "scvi-tools save, which is a pickle that can run code) are not read."
        )
    meta = read_json_file(path, "model settings")
    if not isinstance(meta, dict):
        raise _invalid(dir_path, f"{META_FILE} holds a JSON {type(meta).__name__}, not an object")
    try:
        meta = _decode(meta)
    except (KeyError, TypeError, ValueError) as err:
        raise _invalid(dir_path, f"{META_FILE} holds a malformed array or table ({err})") from None
    found = meta.get("model_class")
    if not isinstance(found, str):
        raise _invalid(dir_path, f"{META_FILE} does not name the model class (`model_class`)")
    if found != class_name:
        raise ModelFileError(
            f"{dir_path} holds a {found} model, not a {class_name}: load it with "
            f"{found}.load (or {found}.load_registry)."
        )
    missing = [k for k in keys if k not in meta]
    if missing:
        raise _invalid(dir_path, f"{META_FILE} lacks {missing}; it is incomplete or corrupt")
    return meta


def load_tensors(path: str, what: str) -> Any:
    """Read a PyTorch file with ``weights_only=True``; any failure says the file is invalid.

    The error never repeats torch's suggestion to retry with ``weights_only=False``: a file that
    needs it holds Python objects whose unpickling can run arbitrary code.
    """
    if not os.path.exists(path):
        raise ModelFileNotFoundError(f"{what} {path} does not exist.")
    if os.path.isdir(path):
        raise ModelFileError(f"{what} {path} is a folder, not a file.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise
    except pickle.UnpicklingError as err:
        reason = (
            "it holds Python objects other than tensors (e.g. a scvi-tools save or a crafted "
            "file); such objects can run code when read, so scfound does not read them"
            if "global" in str(err).lower()
            else "it is corrupt or not a PyTorch weights file"
        )
    except Exception as err:  # torch raises many types for a broken file
        reason = f"it is truncated, corrupt or not a PyTorch weights file ({type(err).__name__})"
    raise ModelFileError(
        f"{path} is not a valid scfound {what}: {reason}. Re-save the model with scfound "
        "(or rebuild it from its original source)."
    )


def read_weights(dir_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The module weights of a model folder, read with ``weights_only=True`` and checked."""
    dir_path = _model_folder(dir_path)
    path = os.path.join(dir_path, WEIGHTS_FILE)
    state = load_tensors(path, "model weights file")
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelFileError(
            f"{path} is not a valid scfound model weights file: it does not hold a state dict "
            "(parameter names and tensors)."
        )
    return dict(state)


def check_state_dict(
    state: Mapping[str, torch.Tensor], module: torch.nn.Module, path: str, class_name: str
) -> None:
    """Raise when ``state`` does not fit ``module`` exactly (names and shapes)."""
    ours = module.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    shapes = [
        f"{k}: {tuple(v.shape)} in the file, {tuple(ours[k].shape)} in the model"
        for k, v in state.items()
        if k in ours and tuple(v.shape) != tuple(ours[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} parameters missing (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unknown parameters (e.g. {unexpected[:3]})")
    if shapes:
        problems.append(f"{len(shapes)} shapes differ ({'; '.join(shapes[:3])})")
    if problems:
        raise ModelFileError(
            f"{path} does not fit the {class_name} described by its {META_FILE}: "
            + "; ".join(problems)
            + ". The folder mixes files of different models or is corrupt."
        )


def print_setup_args(class_name: str, registry: dict[str, Any]) -> None:
    """Print the ``setup_anndata`` arguments of a saved registry (as scvi-tools does)."""
    import rich
    import rich.pretty

    method = registry.get("setup_method_name", "setup_anndata")
    rich.print(f"Setup via `{class_name}.{method}` with arguments:")
    rich.pretty.pprint(registry.get("setup_args"))
    rich.print()


_FRAMES = ("obs", "var")
_MAPPINGS = ("uns", "obsm", "varm", "obsp", "varp", "layers")


def _snapshot(adata: Any) -> dict[str, Any]:
    """What :func:`_restore` needs; a MuData also snapshots each of its modalities."""
    snap: dict[str, Any] = {"X": adata.X}
    for name in _FRAMES:
        snap[name] = getattr(adata, name).copy()
    for name in _MAPPINGS:
        mapping = getattr(adata, name, None)
        snap[name] = None if mapping is None else dict(mapping)
    mods = getattr(adata, "mod", None)
    snap["mod"] = {} if mods is None else {k: (m, _snapshot(m)) for k, m in mods.items()}
    return snap


def _restore(adata: Any, snap: dict[str, Any]) -> None:
    if adata.X is not snap["X"]:
        adata.X = snap["X"]
    for name in _FRAMES:
        frame, saved = getattr(adata, name), snap[name]
        for column in [c for c in frame.columns if c not in saved.columns]:
            del frame[column]
        for column in saved.columns:
            if (
                column not in frame.columns
                or frame[column].dtype != saved[column].dtype
                or not frame[column].equals(saved[column])
            ):
                frame[column] = saved[column]
    for name in _MAPPINGS:
        mapping, saved = getattr(adata, name, None), snap[name]
        if mapping is None or saved is None:
            continue
        for key in [k for k in mapping.keys() if k not in saved]:
            del mapping[key]
        for key, value in saved.items():
            if key not in mapping or mapping[key] is not value:
                mapping[key] = value
    for mod, mod_snap in snap["mod"].values():
        _restore(mod, mod_snap)


@contextmanager
def restore_on_error(model_cls: type, *adatas: AnnData | None) -> Iterator[None]:
    """Undo what a failing block did to ``adatas`` and to ``model_cls``'s manager stores.

    The ``obs``/``var`` columns, the ``uns``/``obsm``/``varm``/``obsp``/``varp``/``layers``
    entries and ``X`` of each AnnData (and of each modality of a MuData) are put back as they
    were (columns by value, entries by identity), and the AnnData managers that
    ``setup_anndata`` registered are dropped again.
    """
    snaps = [(a, _snapshot(a)) for a in adatas if a is not None]
    setup_store = model_cls._setup_adata_manager_store
    instance_store = model_cls._per_instance_manager_store
    saved_setup = dict(setup_store)
    saved_instances = {k: (v, dict(v)) for k, v in instance_store.items()}
    try:
        yield
    except BaseException:
        for adata, snap in snaps:
            _restore(adata, snap)
        setup_store.clear()
        setup_store.update(saved_setup)
        instance_store.clear()
        for key, (store, content) in saved_instances.items():
            store.clear()
            store.update(content)
            instance_store[key] = store
        raise


def register_fields(model_cls: type, manager: Any, adata: AnnData, **kwargs: Any) -> None:
    """Register ``adata`` with ``manager`` for ``model_cls``, all or nothing.

    scvi-tools writes each field into the AnnData as it registers it (``obs["_scvi_*"]``,
    ``uns`` ids); a field that fails (an unknown category, a malformed column) would leave the
    earlier ones written. Here a failure puts ``adata`` back as it was (:func:`restore_on_error`).

    Parameters
    ----------
    model_cls
        The model class whose ``setup_anndata`` is running.
    manager
        Its :class:`~scvi.data.AnnDataManager`.
    adata
        The data to register.
    **kwargs
        Passed to :meth:`~scvi.data.AnnDataManager.register_fields` (``source_registry``).
    """
    with restore_on_error(model_cls, adata):
        manager.register_fields(adata, **kwargs)
        model_cls.register_manager(manager)


def check_model_data(adata: Any, name: str = "adata", *, mudata: bool = False) -> None:
    """The checks of an AnnData handed to a model: type, at least two cells, unique names.

    Parameters
    ----------
    adata
        What the caller passed.
    name
        The argument's name, for the messages.
    mudata
        Accept a MuData too (models set up with ``setup_mudata``).
    """
    check_anndata(adata, name, mudata=mudata)
    if hasattr(adata, "mod"):  # a MuData: a gene and a protein may share a name (CD4)
        check_cells_and_genes(adata, name, min_obs=2, genes=False)
        for mod, bdata in adata.mod.items():
            check_cells_and_genes(bdata, f"{name}.mod[{mod!r}]", min_obs=2)
        return
    check_cells_and_genes(adata, name, min_obs=2)  # a cell is modelled in the context of others


def _read_saved_data(dir_path: str) -> Any:
    """The AnnData or MuData saved in a model folder (``save_anndata=True``)."""
    from mudata import read_h5mu

    readers = ((ADATA_FILE, read_h5ad, "AnnData"), (MDATA_FILE, read_h5mu, "MuData"))
    for name, reader, kind in readers:
        path = os.path.join(dir_path, name)
        if os.path.exists(path):
            try:
                return reader(path)
            except Exception as err:  # h5py, anndata and mudata raise many types
                raise ModelFileError(
                    f"{path} is not a readable {kind} file ({type(err).__name__}: {err})."
                ) from None
    raise ValueError(f"pass `adata`: {dir_path} was saved without its data.")


class SafeSaveMixin:
    """``save``/``load`` for scfound models without pickle (see module docstring).

    Attributes named in :attr:`_saved_attrs` (JSON-encodable) are saved with the model and set
    again by :meth:`load`. The constructor refuses, with a clear ``TypeError``, an ``adata``
    that is not an AnnData (or a MuData, for a model with ``setup_mudata``).
    """

    #: further attributes saved in ``model.json`` and restored by :meth:`load` when present
    _saved_attrs: tuple[str, ...] = ()

    def __init__(self, adata: AnnData | None = None, registry: dict | None = None, *args, **kwargs):
        if adata is not None or registry is None:
            check_anndata(adata, mudata=hasattr(type(self), "setup_mudata"))
        super().__init__(adata, registry, *args, **kwargs)

    def save(self, dir_path: str, overwrite: bool = False, save_anndata: bool = False) -> None:
        """Save the model to ``dir_path``.

        Parameters
        ----------
        dir_path
            Folder to write ``model.pt`` (weights) and ``model.json`` (everything else) to.
        overwrite
            Replace an existing folder's model files.
        save_anndata
            Also write the registered data: an AnnData as ``adata.h5ad``, a MuData as
            ``mdata.h5mu``.

        """
        meta = {
            "var_names": self.adata.var_names.astype(str).tolist(),
            "registry": self.registry_,
            "init_params": self.init_params_,
            "is_trained": self.is_trained_,
            "history": self.history_,
            "attrs": {k: getattr(self, k) for k in self._saved_attrs if hasattr(self, k)},
        }
        write_model(dir_path, self, meta, overwrite)
        if save_anndata:
            if isinstance(self.adata, AnnData):
                self.adata.write_h5ad(os.path.join(dir_path, ADATA_FILE))
            else:  # a MuData
                self.adata.write(os.path.join(dir_path, MDATA_FILE))

    @classmethod
    def load(
        cls,
        dir_path: str,
        adata: AnnData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
    ):
        """Load a model saved with :meth:`save`.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        adata
            Data to attach, with the model's genes in the same order; it is set up with the saved
            :meth:`setup_anndata` arguments. Default: the data saved with the model.
        accelerator, device
            Where to put the module (as in scvi-tools).

        Raises
        ------
        ModelFileError
            When the folder is missing, incomplete or corrupt, holds another model class, or
            its weights do not fit the saved settings. Everything is read and checked before
            ``adata`` is set up, and a load that fails later leaves ``adata`` as it was.

        """
        from scvi.model._utils import parse_device_args
        from scvi.model.base._save_load import _initialize_model

        dir_path = _model_folder(dir_path)
        meta = read_model_meta(dir_path, cls.__name__, META_KEYS)
        registry = meta["registry"]
        if not isinstance(registry, dict) or not isinstance(registry.get("setup_args"), dict):
            raise _invalid(dir_path, f"the registry in {META_FILE} has no setup arguments")
        init = meta["init_params"]
        if not (
            isinstance(init, dict)
            and isinstance(init.get("non_kwargs"), dict)
            and isinstance(init.get("kwargs"), dict)
            and all(isinstance(v, dict) for v in init["kwargs"].values())
        ):
            raise _invalid(dir_path, f"the init parameters in {META_FILE} are malformed")
        # never call a method named by the file other than these two
        method = registry.get("setup_method_name", "setup_anndata")
        if method not in ("setup_anndata", "setup_mudata") or not hasattr(cls, method):
            raise _invalid(dir_path, f"its registry names an unknown setup method {method!r}")
        setup = getattr(cls, method)
        state = read_weights(dir_path)
        if adata is None:
            adata = _read_saved_data(dir_path)
        check_model_data(adata, mudata=hasattr(cls, "setup_mudata"))
        check_genes(adata.var_names, meta["var_names"])
        attrs = {"init_params_": meta["init_params"], "is_trained_": meta["is_trained"]}
        if meta["history"] is not None:
            attrs["history_"] = meta["history"]
        with restore_on_error(cls, adata):
            setup(adata, source_registry=registry, **registry["setup_args"])
            try:
                model = _initialize_model(cls, adata, registry, attrs, None)
            except TypeError as err:
                problem = f"its init parameters do not fit {cls.__name__} ({err})"
                raise _invalid(dir_path, problem) from None
            check_state_dict(
                state, model.module, os.path.join(dir_path, WEIGHTS_FILE), cls.__name__
            )
            model.module.load_state_dict(state)
        saved = meta.get("attrs")
        if isinstance(saved, dict):
            for name in cls._saved_attrs:
                if name in saved:
                    setattr(model, name, saved[name])
        _, _, device = parse_device_args(accelerator, device, return_device="torch")
        model.to_device(device)
        model.module.eval()
        return model

    @classmethod
    def load_registry(cls, dir_path: str, prefix: str | None = None) -> dict:
        """The registry (setup arguments and field states) saved with a model.

        Read from ``model.json``; unlike scvi-tools' version, nothing is unpickled.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        prefix
            Not supported (scfound saves without a file prefix); must be ``None``.

        Returns
        -------
        The registry, as :attr:`~scvi.model.base.BaseModelClass.registry_` of the saved model.

        """
        check_prefix(prefix)
        meta = read_model_meta(dir_path, cls.__name__, ("registry",))
        if not isinstance(meta["registry"], dict):
            raise _invalid(os.fspath(dir_path), f"the registry in {META_FILE} is not an object")
        return meta["registry"]

    @classmethod
    def view_setup_args(cls, dir_path: str, prefix: str | None = None) -> None:
        """Print the arguments the saved model's AnnData was set up with (read from JSON).

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        prefix
            Not supported (scfound saves without a file prefix); must be ``None``.

        """
        print_setup_args(cls.__name__, cls.load_registry(dir_path, prefix))

    @classmethod
    def convert_legacy_save(cls, dir_path: str, output_dir_path: str, *args, **kwargs) -> None:
        """Not available: legacy scvi-tools saves are pickles, which can run code when read.

        Raises
        ------
        NotImplementedError
            Always; nothing is read or written.

        """
        raise NotImplementedError(
            f"{cls.__name__}.convert_legacy_save is not available: legacy scvi-tools saves "
            f"({dir_path}) are pickles that can run arbitrary code when read, and scfound never "
            f"unpickles model files. Save scfound models with `{cls.__name__}.save(dir)` and "
            f"read them with `{cls.__name__}.load(dir, adata)`."
        )
