"""``sf.tl.annotate``: cell-type labels from a deep model into ``adata.obs``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from scfound._docs import doc_adata, doc_params, doc_reference, doc_returns, doc_shared
from scfound._keys import confidence_key, prediction_key, probabilities_key
from scfound._validate import check_cells_and_genes

from ._methods import Result, get_adapter
from ._run import modality, run


@doc_params(adata=doc_adata, reference=doc_reference, shared=doc_shared, returns=doc_returns)
def annotate(  # noqa: D417 - shared parameters are filled in by doc_params
    adata: AnnData | MuData,
    labels_key: str,
    method: str = "cellplm",
    *,
    reference: AnnData | MuData | None = None,
    key_added: str | None = None,
    layer: str | None = None,
    reference_layer: str | None = None,
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
    """Annotate cell types: learn them from labelled cells and predict every cell of ``adata``.

    Either ``adata.obs[labels_key]`` labels some cells and the rest are predicted (CellPLM), or
    a labelled ``reference`` (``reference.obs[labels_key]``) is the source of labels for every
    cell of ``adata`` (CellPLM, stAI).

    Parameters
    ----------
    {adata}
    labels_key
        Column of ``obs`` (of ``reference`` when given, else of ``adata``) with cell types.
    method
        ``"cellplm"`` or ``"stai"`` (needs a ``reference`` and coordinates).
    {reference}
    key_added
        Prefix of the outputs; default the method's name.
    {shared}

    Returns
    -------
    {returns} Writes ``obs[f"{{key_added}}_prediction"]`` (categorical),
    ``obs[f"{{key_added}}_confidence"]`` (the probability of the predicted type),
    ``obsm[f"{{key_added}}_probabilities"]`` (a DataFrame of class probabilities) and
    ``uns['scfound']['annotate'][key_added]``.
    """
    get_adapter(method, "annotate")  # an unsupported method is refused before anything else
    source, where = (reference, "reference") if reference is not None else (adata, "adata")
    # the data checks of every verb come before the labels are looked at
    check_cells_and_genes(modality(adata, mod), min_obs=2)
    obs = modality(source, mod, where).obs
    if labels_key not in obs:
        raise KeyError(
            f"labels column {labels_key!r} not found in {where}.obs (columns: {list(obs.columns)})."
        )
    classes = set(obs[labels_key].dropna().astype(str)) - {
        str(options.get("unlabeled_category", "unknown"))
    }
    if len(classes) < 2:
        raise ValueError(
            f"{where}.obs[{labels_key!r}] holds {len(classes)} cell type(s) ({sorted(classes)}); "
            "annotation needs labelled cells of at least two types."
        )
    key_added = key_added or method
    return run("annotate", locals(), common=("labels_key",), write=_write, places=_places)


def _places(key: str) -> list[tuple[str, str]]:
    return [
        ("obs", prediction_key(key)),
        ("obs", confidence_key(key)),
        ("obsm", probabilities_key(key)),
    ]


def _write(adata: AnnData, result: Result, key: str) -> None:
    probs = result.values
    adata.obs[prediction_key(key)] = pd.Categorical(probs.idxmax(axis=1).to_numpy())
    adata.obs[confidence_key(key)] = probs.max(axis=1).to_numpy(dtype=np.float32)
    adata.obsm[probabilities_key(key)] = probs
