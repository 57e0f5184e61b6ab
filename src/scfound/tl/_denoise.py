"""``sf.tl.denoise``: reconstructed expression of the measured genes into ``adata.layers``."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from anndata import AnnData
from mudata import MuData

from scfound._keys import denoised_key
from scfound._utils import check_scale

from ._methods import Result
from ._run import run

VERB = "denoise"


def denoise(
    adata: AnnData | MuData,
    method: str = "cellplm",
    *,
    layer: str | None = None,
    spatial_key: str = "spatial",
    group_key: str | None = None,
    model: Any = None,
    scale: Literal["counts", "log1p"] = "log1p",
    key_added: str | None = None,
    max_epochs: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    train_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    mod: str | None = None,
    return_model: bool = False,
    copy: bool = False,
    sample_key: str | None = None,
    **options: Any,
) -> Any:
    """Denoise expression and write it into ``adata.layers[key_added]``.

    Parameters
    ----------
    adata
        Cells x genes with raw counts in ``layer`` (or ``.X``); a MuData reads modality ``mod``.
    method
        A method that supports denoising (``"cellplm"``).
    layer, spatial_key, group_key, model, max_epochs, model_kwargs, train_kwargs, seed, mod
        As in :func:`scfound.tl.impute` (CellPLM trains 50 epochs by default here).
    scale
        ``"log1p"`` (log-normalised to 1e4, the CellPLM paper's metric space) or ``"counts"``.
    key_added
        Layer to write; default ``"<method>_denoised"``.
    return_model
        Also return the model, so that another verb can reuse it (``model=``).
    copy
        Return a modified copy instead of writing into ``adata``.
    sample_key
        Deprecated name of ``group_key``.
    **options
        Options of the method (CellPLM: ``gene_key``, ``fine_tune``).

    Returns
    -------
    ``None``, the copy, the model (``return_model``) or ``(copy, model)``. Writes
    ``adata.layers[key_added]`` (genes the model does not know are NaN) and
    ``adata.uns['scfound']['denoise'][key_added]``.
    """
    check_scale(scale)
    key_added = key_added or denoised_key(method)
    return run(
        VERB,
        adata,
        method,
        common={"scale": scale},
        options=options,
        write=_write,
        key_added=key_added,
        mod=mod,
        copy=copy,
        return_model=return_model,
        group_key=group_key,
        sample_key=sample_key,
        layer=layer,
        spatial_key=spatial_key,
        model=model,
        max_epochs=max_epochs,
        model_kwargs=model_kwargs,
        train_kwargs=train_kwargs,
        seed=seed,
    )


def _write(adata: AnnData, result: Result, key: str) -> None:
    adata.layers[key] = result.values.to_numpy(dtype=np.float32)
