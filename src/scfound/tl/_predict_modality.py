"""``sf.tl.predict_modality``: predict an unmeasured modality from a paired reference."""

from __future__ import annotations

from typing import Any

import numpy as np
from anndata import AnnData
from mudata import MuData

from scfound._keys import modality_key
from scfound._utils import record
from scfound._validate import check_anndata, check_cells_and_genes

from ._methods import Result, get_adapter
from ._methods._base import Inputs
from ._run import (
    check_counts,
    check_options,
    check_paired_reference,
    check_reference_counts,
    check_writable,
    modality,
    summary,
)

#: the verb's own arguments handed to the adapter
COMMON = ("source", "target")


def predict_modality(
    adata: AnnData | MuData,
    reference: MuData,
    method: str = "scmognn",
    *,
    source: str = "rna",
    target: str = "adt",
    key_added: str | None = None,
    layer: str | None = None,
    reference_layer: str | None = None,
    model: Any = None,
    max_epochs: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    train_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    return_model: bool = False,
    copy: bool = False,
    **options: Any,
) -> Any:
    """Predict a modality the cells were not measured in, from a paired reference.

    A model learns the map from ``source`` to ``target`` on the paired cells of ``reference``
    (e.g. CITE-seq RNA and proteins) and applies it to the ``source`` counts of ``adata``'s cells
    (e.g. an RNA-only sample, possibly from another donor or batch).

    Parameters
    ----------
    adata
        Cells measured in ``source``: an AnnData of raw counts, or a MuData with a modality named
        ``source``. Features are matched to the reference's by name; missing ones are read as 0
        (with a warning giving their number).
    reference
        MuData with paired ``source`` and ``target`` modalities (same cells), raw counts.
    method
        ``"scmognn"``.
    source, target
        Modality names in ``reference`` (``"rna"``, ``"adt"``, ``"atac"``, ...).
    key_added
        Key in ``adata.obsm``; default ``"<method>_<target>"``.
    layer
        Layer of ``adata`` with the raw counts; ``None`` uses ``.X``.
    reference_layer
        Layer with raw counts in both modalities of ``reference``; ``None`` uses ``.X``.
    model
        A trained model of ``method`` for the same source and target kinds (ScMoGNN: or a list
        of them, whose predictions are averaged), to apply instead of training one.
    max_epochs
        Training epochs when a model is trained; ``None`` takes the method's default.
    model_kwargs, train_kwargs
        Passed to the model class and to its ``train`` method.
    seed
        Random seed of the initial weights and of training.
    return_model
        Also return the model, to reuse it (``model=``) without training.
    copy
        Return a modified copy instead of writing into ``adata``.
    **options
        Options of the method (ScMoGNN: ``source_kind``, ``target_kind``, ``n_models``: a
        seed ensemble of that many models).

    Returns
    -------
    ``None``; the modified copy with ``copy=True``; the model with ``return_model=True`` (and
    ``(copy, model)`` with both). Writes ``adata.obsm[key_added]`` (of the ``source`` modality
    when ``adata`` is a MuData): a DataFrame, cells x target features, on the normalised scale
    of the target (``log1p`` counts per 10,000 for RNA, CLR for proteins, accessibility for
    ATAC), and ``adata.uns['scfound']['predict_modality'][key_added]``.

    Examples
    --------
    >>> cite = mudata.read_h5mu("pbmc10k_cite.h5mu")
    >>> rna = sc.read_h5ad("pbmc5k_rna.h5ad")
    >>> sf.tl.predict_modality(rna, cite, source="rna", target="adt", reference_layer="counts")
    >>> rna.obsm["scmognn_adt"].head()
    """
    check_anndata(adata, mudata=True)
    check_anndata(reference, "reference", mudata=True)
    adapter = get_adapter(method, "predict_modality")
    check_options(method, "predict_modality", options, COMMON)
    check_paired_reference(reference, source, target)
    key_added = key_added or modality_key(method, target)
    data = adata.copy() if copy else adata
    query = modality(data, source if isinstance(data, MuData) else None)
    check_writable(query, "predict_modality", key_added, [("obsm", key_added)], {"layer": layer})
    check_cells_and_genes(query)
    if model is None:
        check_counts(query, layer, f"method={method!r}")
        check_reference_counts(reference, source, target, reference_layer, method)
    inputs = Inputs(
        adata=query,
        reference=reference,
        layer=layer,
        reference_layer=reference_layer,
        model=model,
        max_epochs=max_epochs,
        seed=seed,
        model_kwargs=dict(model_kwargs or {}),
        train_kwargs=dict(train_kwargs or {}),
    )
    result: Result = adapter.predict_modality(inputs, source=source, target=target, **options)
    query.obsm[key_added] = result.values.astype(np.float32)
    params = {
        "method": method,
        "key_added": key_added,
        "source": source,
        "target": target,
        "layer": layer,
        "reference_layer": reference_layer,
        "max_epochs": max_epochs,
        "seed": seed,
        "model_kwargs": inputs.model_kwargs,
        "train_kwargs": inputs.train_kwargs,
        **options,
        **result.params,
        **summary(result.model),
    }
    record(query, "predict_modality", key_added, params)
    out = data if copy else None
    if return_model:
        return (out, result.model) if copy else result.model
    return out
