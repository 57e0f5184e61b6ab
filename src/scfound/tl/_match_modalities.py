"""``sf.tl.match_modalities``: match cells measured in two modalities without pairing."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from mudata import MuData

from scfound._keys import matching_key
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
    summary,
)

#: the verb's own arguments handed to the adapter
COMMON = ("other", "other_layer", "source", "target", "batch_key", "hungarian", "top_k")


def match_modalities(
    adata: AnnData,
    other: AnnData,
    reference: MuData,
    method: str = "scmognn",
    *,
    source: str = "rna",
    target: str = "adt",
    key_added: str | None = None,
    layer: str | None = None,
    other_layer: str | None = None,
    reference_layer: str | None = None,
    batch_key: str | None = None,
    hungarian: bool = False,
    top_k: int = 1000,
    model: Any = None,
    max_epochs: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    train_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    return_model: bool = False,
    copy: bool = False,
    **options: Any,
) -> Any:
    """Match each cell of one modality to the cells of another, learned from paired cells.

    ``adata`` and ``other`` hold the same cells measured in two modalities (e.g. RNA and ADT),
    with the pairing unknown. A model learns the relation of the two modalities on the paired
    cells of ``reference`` and gives, for each cell of ``adata``, the probability that it is each
    cell of ``other`` (the NeurIPS 2021 competition's modality matching task).

    Parameters
    ----------
    adata
        Cells measured in ``source`` (raw counts).
    other
        Cells measured in ``target`` (raw counts), not modified.
    reference
        MuData with paired ``source`` and ``target`` modalities (same cells), raw counts.
    method
        ``"scmognn"``.
    source, target
        Names in ``reference`` of ``adata``'s and ``other``'s modality.
    key_added
        Prefix of the keys written; default ``"<method>"``: ``obsm["<method>_matching"]`` and
        ``obs["<method>_match"]``.
    layer, other_layer, reference_layer
        Layers with raw counts of ``adata``, ``other`` and both modalities of ``reference``
        (``None``: ``.X``).
    batch_key
        Column of ``adata.obs`` and ``other.obs`` with batches (samples): cells are only
        matched within their batch (the competition's batch-wise matching).
    hungarian
        Refine the probabilities with a one-to-one assignment per batch (Hungarian algorithm,
        :func:`scipy.optimize.linear_sum_assignment`, maximising the total log-probability):
        assigned rows become one-hot.
    top_k
        Non-zeros kept per row (the competition's limit is 1,000); rows are renormalised.
    model
        A trained model of ``method`` for the same direction, to apply instead of training one.
    max_epochs
        Training epochs when a model is trained; ``None`` takes the method's default.
    model_kwargs, train_kwargs
        Passed to the model class and to its ``train`` method.
    seed
        Random seed of the initial weights and of training.
    return_model
        Also return the model, to reuse it (``model=``) without training.
    copy
        Return a modified copy of ``adata`` instead of writing into it.
    **options
        Options of the method (ScMoGNN: ``source_kind``, ``target_kind``, ``temperature``).

    Returns
    -------
    ``None``; the modified copy with ``copy=True``; the model with ``return_model=True`` (and
    ``(copy, model)`` with both). Writes ``adata.obsm["<key_added>_matching"]`` (sparse CSR,
    ``adata.n_obs`` x ``other.n_obs``, rows sum to 1, at most ``top_k`` non-zeros per row; column
    ``j`` is ``other.obs_names[j]``), ``adata.obs["<key_added>_match"]`` (the most probable
    ``other`` cell) and ``adata.uns['scfound']['match_modalities'][key_added]``.

    Examples
    --------
    >>> sf.tl.match_modalities(rna, adt, cite, source="rna", target="adt", layer="counts")
    >>> sf.metrics.matching_score(rna.obsm["scmognn_matching"], truth)
    """
    check_anndata(adata)
    check_anndata(other, "other")
    check_anndata(reference, "reference", mudata=True)
    adapter = get_adapter(method, "match_modalities")
    check_options(method, "match_modalities", options, COMMON)
    check_paired_reference(reference, source, target)
    if not isinstance(top_k, int | np.integer) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}.")
    if batch_key is not None:
        for name, data in (("adata", adata), ("other", other)):
            if batch_key not in data.obs.columns:
                raise KeyError(f"batch_key={batch_key!r} is not a column of {name}.obs.")
            n_missing = int(data.obs[batch_key].isna().sum())
            if n_missing:
                raise ValueError(
                    f"{name}.obs[{batch_key!r}] (`batch_key`) has {n_missing} missing values; "
                    "give every cell a batch or pass batch_key=None."
                )
    prefix = key_added or method
    obsm_key, obs_key = matching_key(prefix), f"{prefix}_match"
    places = [("obsm", obsm_key), ("obs", obs_key)]
    data = adata.copy() if copy else adata
    check_writable(data, "match_modalities", prefix, places, {"layer": layer})
    check_cells_and_genes(data)
    check_cells_and_genes(other, "other")
    check_counts(other, other_layer, f"method={method!r}", "other")
    if model is None:
        check_counts(data, layer, f"method={method!r}")
        check_reference_counts(reference, source, target, reference_layer, method)
    inputs = Inputs(
        adata=data,
        reference=reference,
        layer=layer,
        reference_layer=reference_layer,
        model=model,
        max_epochs=max_epochs,
        seed=seed,
        model_kwargs=dict(model_kwargs or {}),
        train_kwargs=dict(train_kwargs or {}),
    )
    result: Result = adapter.match_modalities(
        inputs,
        other=other,
        other_layer=other_layer,
        source=source,
        target=target,
        batch_key=batch_key,
        hungarian=hungarian,
        top_k=int(top_k),
        **options,
    )
    matching = sp.csr_matrix(result.values, dtype=np.float32)
    best = np.asarray(matching.argmax(1)).ravel()
    data.obsm[obsm_key] = matching
    data.obs[obs_key] = other.obs_names[best].to_numpy()
    params = {
        "method": method,
        "key_added": prefix,
        "source": source,
        "target": target,
        "layer": layer,
        "other_layer": other_layer,
        "reference_layer": reference_layer,
        "batch_key": batch_key,
        "hungarian": hungarian,
        "top_k": int(top_k),
        "n_other": other.n_obs,
        "max_epochs": max_epochs,
        "seed": seed,
        "model_kwargs": inputs.model_kwargs,
        "train_kwargs": inputs.train_kwargs,
        **options,
        **result.params,
        **summary(result.model),
    }
    record(data, "match_modalities", prefix, params)
    out = data if copy else None
    if return_model:
        return (out, result.model) if copy else result.model
    return out
