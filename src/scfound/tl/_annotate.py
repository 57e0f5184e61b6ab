"""``sf.tl.annotate``: cell-type labels from a deep model into ``adata.obs``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from scfound._keys import confidence_key, prediction_key, probabilities_key

from ._methods import Result, get_adapter
from ._run import modality, run

VERB = "annotate"


def annotate(
    adata: AnnData | MuData,
    labels_key: str,
    method: str = "cellplm",
    *,
    reference: AnnData | MuData | None = None,
    layer: str | None = None,
    reference_layer: str | None = None,
    spatial_key: str = "spatial",
    group_key: str | None = None,
    model: Any = None,
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
    """Annotate cell types: learn them from labelled cells and predict every cell of ``adata``.

    Either ``adata.obs[labels_key]`` labels some cells and the rest are predicted (CellPLM), or
    a labelled ``reference`` (``reference.obs[labels_key]``, genes matched by name) is the
    source of labels for every cell of ``adata`` (CellPLM, stAI).

    Parameters
    ----------
    adata
        Cells x genes with raw counts; a MuData reads modality ``mod``.
    labels_key
        Column of ``obs`` (of ``reference`` when given, else of ``adata``) with cell types.
    method
        ``"cellplm"`` or ``"stai"`` (needs a ``reference`` and coordinates).
    reference, layer, reference_layer, spatial_key, group_key, model, max_epochs, seed, mod
        As in :func:`scfound.tl.impute` (``max_epochs=None`` takes the method's default).
    model_kwargs, train_kwargs
        Passed to the model class and to its ``train`` method.
    key_added
        Prefix of the outputs; default the method's name.
    return_model
        Also return the model.
    copy
        Return a modified copy instead of writing into ``adata``.
    sample_key
        Deprecated name of ``group_key``.
    **options
        Options of the method (CellPLM: ``fine_tune``, ``adapt_epochs``,
        ``unlabeled_category``, ``gene_key``, ``reference_group_key``).

    Returns
    -------
    ``None``, the copy, the model (``return_model``) or ``(copy, model)``. Writes
    ``obs[f"{key_added}_prediction"]`` (categorical), ``obs[f"{key_added}_confidence"]`` (the
    probability of the predicted type), ``obsm[f"{key_added}_probabilities"]`` (a DataFrame of
    class probabilities) and ``uns['scfound']['annotate'][key_added]``.
    """
    get_adapter(method, VERB)  # an unsupported method is refused before anything else
    source, where = (reference, "reference") if reference is not None else (adata, "adata")
    obs = modality(source, mod, where).obs
    if labels_key not in obs:
        raise KeyError(
            f"labels column {labels_key!r} not found in {where}.obs (columns: {list(obs.columns)})."
        )
    key_added = key_added or method
    return run(
        VERB,
        adata,
        method,
        common={"labels_key": labels_key},
        options=options,
        write=_write,
        key_added=key_added,
        mod=mod,
        copy=copy,
        return_model=return_model,
        reference=reference,
        group_key=group_key,
        sample_key=sample_key,
        layer=layer,
        reference_layer=reference_layer,
        spatial_key=spatial_key,
        model=model,
        max_epochs=max_epochs,
        model_kwargs=model_kwargs,
        train_kwargs=train_kwargs,
        seed=seed,
    )


def _write(adata: AnnData, result: Result, key: str) -> None:
    probs = result.values
    adata.obs[prediction_key(key)] = pd.Categorical(probs.idxmax(axis=1).to_numpy())
    adata.obs[confidence_key(key)] = probs.max(axis=1).to_numpy(dtype=np.float32)
    adata.obsm[probabilities_key(key)] = probs
