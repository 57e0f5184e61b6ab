"""``sf.tl.denoise``: reconstructed expression of the measured genes into ``adata.layers``."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from anndata import AnnData
from mudata import MuData

from scfound._docs import doc_adata, doc_params, doc_returns, doc_shared
from scfound._keys import denoised_key
from scfound._utils import check_scale

from ._methods import Result
from ._run import run


@doc_params(adata=doc_adata, shared=doc_shared, returns=doc_returns)
def denoise(  # noqa: D417 - shared parameters are filled in by doc_params
    adata: AnnData | MuData,
    method: str = "cellplm",
    *,
    scale: Literal["counts", "log1p"] = "log1p",
    key_added: str | None = None,
    layer: str | None = None,
    spatial_key: str = "spatial",
    group_key: str | None = None,
    model: Any = None,
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
    {adata}
    method
        A method that supports denoising (``"cellplm"``; it trains 50 epochs by default here).
    scale
        ``"log1p"`` (log-normalised to 1e4, the CellPLM paper's metric space) or ``"counts"``.
    key_added
        Layer to write; default ``"<method>_denoised"``.
    {shared}

    Returns
    -------
    {returns} Writes ``adata.layers[key_added]`` (genes the model does not know are NaN) and
    ``adata.uns['scfound']['denoise'][key_added]``.
    """
    check_scale(scale)
    key_added = key_added or denoised_key(method)
    return run(
        "denoise", locals(), common=("scale",), write=_write, places=lambda key: [("layers", key)]
    )


def _write(adata: AnnData, result: Result, key: str) -> None:
    adata.layers[key] = result.values.to_numpy(dtype=np.float32)
