"""Saving and loading that cannot run code: tensors with ``weights_only=True``, the rest as JSON.

scvi-tools' own :meth:`~scvi.model.base.BaseModelClass.load` unpickles the whole model file
(``torch.load(weights_only=False)``), so a model file from an untrusted source can execute code.
scfound models store the module weights alone (``model.pt``, read with ``weights_only=True``) and
the registry, init parameters, gene names and training history as JSON (``model.json``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData, read_h5ad

WEIGHTS_FILE = "model.pt"
META_FILE = "model.json"
ADATA_FILE = "adata.h5ad"


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
    """Write ``model.module``'s weights and ``meta`` (plus the class name) to ``dir_path``."""
    if os.path.exists(os.path.join(dir_path, META_FILE)) and not overwrite:
        raise ValueError(f"{dir_path} already holds a model; pass overwrite=True to replace it.")
    os.makedirs(dir_path, exist_ok=True)
    torch.save(model.module.state_dict(), os.path.join(dir_path, WEIGHTS_FILE))
    with open(os.path.join(dir_path, META_FILE), "w") as fh:
        json.dump(_encode({"model_class": type(model).__name__, **meta}), fh)


def read_model_meta(dir_path: str, class_name: str) -> dict[str, Any]:
    """The settings written by :func:`write_model`, checked to belong to ``class_name``."""
    with open(os.path.join(dir_path, META_FILE)) as fh:
        meta = _decode(json.load(fh))
    if meta["model_class"] != class_name:
        raise ValueError(f"{dir_path} holds a {meta['model_class']} model, not a {class_name}.")
    return meta


class SafeSaveMixin:
    """``save``/``load`` for scfound models without pickle (see module docstring)."""

    def save(self, dir_path: str, overwrite: bool = False, save_anndata: bool = False) -> None:
        """Save the model to ``dir_path``.

        Parameters
        ----------
        dir_path
            Folder to write ``model.pt`` (weights) and ``model.json`` (everything else) to.
        overwrite
            Replace an existing folder's model files.
        save_anndata
            Also write the registered AnnData as ``adata.h5ad``.

        """
        meta = {
            "var_names": self.adata.var_names.astype(str).tolist(),
            "registry": self.registry_,
            "init_params": self.init_params_,
            "is_trained": self.is_trained_,
            "history": self.history_,
        }
        write_model(dir_path, self, meta, overwrite)
        if save_anndata:
            self.adata.write_h5ad(os.path.join(dir_path, ADATA_FILE))

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
            :meth:`setup_anndata` arguments. Default: the ``adata.h5ad`` saved with the model.
        accelerator, device
            Where to put the module (as in scvi-tools).

        """
        from scvi.model._utils import parse_device_args
        from scvi.model.base._save_load import _initialize_model

        meta = read_model_meta(dir_path, cls.__name__)
        if adata is None:
            path = os.path.join(dir_path, ADATA_FILE)
            if not os.path.exists(path):
                raise ValueError(f"pass `adata`: {dir_path} was saved without its AnnData.")
            adata = read_h5ad(path)
        check_genes(adata.var_names, meta["var_names"])
        registry = meta["registry"]
        cls.setup_anndata(adata, source_registry=registry, **registry["setup_args"])
        attrs = {"init_params_": meta["init_params"], "is_trained_": meta["is_trained"]}
        if meta["history"] is not None:
            attrs["history_"] = meta["history"]
        model = _initialize_model(cls, adata, registry, attrs, None)
        state = torch.load(
            os.path.join(dir_path, WEIGHTS_FILE), map_location="cpu", weights_only=True
        )
        model.module.load_state_dict(state)
        _, _, device = parse_device_args(accelerator, device, return_device="torch")
        model.to_device(device)
        model.module.eval()
        return model
