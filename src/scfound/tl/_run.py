"""The four steps of every ``tl`` verb.

Resolve the method, hand the work to its adapter, write the result to the place fixed for the
verb, record the run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from mudata import MuData

from scfound._utils import get_matrix, layer_name, record, resolve_group_key
from scfound._validate import check_anndata, check_cells_and_genes, check_key_added

from ._methods import ADAPTERS, Inputs, Result, get_adapter

#: the modality a verb reads from a MuData when ``mod`` is not given and it has several
DEFAULT_MODALITY = "rna"

#: entries of a count matrix looked at to tell counts from normalised values
_SAMPLE_VALUES = 100_000


def modality(data: AnnData | MuData, mod: str | None, name: str = "adata") -> AnnData:
    """``data`` itself, or the modality ``mod`` of a MuData (default ``"rna"`` or its only one)."""
    check_anndata(data, name, mudata=True)
    if isinstance(data, AnnData):
        if mod is not None:
            raise ValueError(f"`mod={mod!r}` applies to a MuData; `{name}` is an AnnData.")
        return data
    mods = list(data.mod)
    if mod is None:
        if len(mods) == 1:
            return data.mod[mods[0]]
        if DEFAULT_MODALITY in data.mod:
            return data.mod[DEFAULT_MODALITY]
        raise ValueError(f"`{name}` is a MuData with modalities {mods}; pass `mod=` to pick one.")
    if mod not in data.mod:
        raise KeyError(f"modality {mod!r} not found in `{name}` (modalities: {mods}).")
    return data.mod[mod]


def check_counts(adata: AnnData, layer: str | None, method: str, name: str = "adata") -> None:
    """Refuse a matrix without counts; warn when it holds non-integer (normalised) values."""
    X = get_matrix(adata, layer)
    if not (sp.issparse(X) or isinstance(X, np.ndarray)):
        return  # on disk: the model checks it block by block
    values = X.data if sp.issparse(X) else np.asarray(X).ravel()
    where = layer_name(layer).replace("adata", name, 1)
    if not np.any(values):
        raise ValueError(
            f"{where} holds no counts (every value is 0); {method} has nothing to learn."
        )
    values = values[:_SAMPLE_VALUES]
    finite = values[np.isfinite(values)]
    if finite.size and not np.allclose(finite, np.round(finite)):
        what = "log-normalised" if finite.max() < 30 else "normalised"
        warnings.warn(
            f"{where} holds non-integer values (max {finite.max():.3g}): they look {what}, but "
            f"{method} expects raw counts. Pass `layer=` naming the raw counts "
            "(e.g. layer='counts').",
            UserWarning,
            stacklevel=4,
        )


def check_paired_reference(reference: object, source: str, target: str) -> None:
    """Refuse a ``reference`` that is not a MuData holding distinct ``source`` and ``target``."""
    if not isinstance(reference, MuData):
        raise TypeError(
            "reference must be a MuData with the paired source and target modalities, got "
            f"{type(reference).__name__}."
        )
    for argument, name in (("source", source), ("target", target)):
        if name not in reference.mod:
            raise KeyError(
                f"{argument}={name!r}: modality not found in `reference` (modalities: "
                f"{list(reference.mod)})."
            )
    if source == target:
        raise ValueError(f"source and target must differ, both are {source!r}.")


def check_reference_counts(
    reference: MuData, source: str, target: str, layer: str | None, method: str
) -> None:
    """:func:`check_counts` on the ``source`` and ``target`` modalities of a paired reference."""
    for name in (source, target):
        check_counts(reference.mod[name], layer, f"method={method!r}", f"reference.mod[{name!r}]")


def check_writable(
    adata: AnnData,
    verb: str,
    key_added: str,
    places: list[tuple[str, str]],
    args: dict[str, Any],
) -> None:
    """Refuse, before any work, a ``key_added`` that would replace the caller's own data.

    A key may replace the result of an earlier run of the same verb under the same
    ``key_added`` (a rerun); any other existing key (raw counts, coordinates, labels, another
    tool's result) and the keys this call reads are refused (see
    :func:`scfound._validate.check_key_added`, the guard every writer shares).
    """
    read = {args.get(k) for k in ("layer", "spatial_key", "labels_key", "group_key")} - {None}
    check_key_added(
        adata, f"tl.{verb}", key_added, places, [(a, k) for a, k in places if k in read]
    )


def check_options(method: str, verb: str, options: dict[str, Any], common: tuple[str, ...]) -> None:
    """Raise a ``TypeError`` naming each option that ``method`` does not know for ``verb``."""
    known = ADAPTERS[method].options(verb, common)
    unknown = sorted(set(options) - set(known))
    if unknown:
        listed = ", ".join(known) if known else "none"
        raise TypeError(
            f"tl.{verb}(method={method!r}) got unknown option(s) {unknown}; the options of "
            f"{method!r} for tl.{verb} are: {listed}."
        )


#: the verb arguments that become fields of :class:`~scfound.tl._methods.Inputs`
INPUT_FIELDS = (
    "layer",
    "spatial_key",
    "reference_layer",
    "model",
    "max_epochs",
    "seed",
    "model_kwargs",
    "train_kwargs",
)


def run(
    verb: str,
    args: dict[str, Any],
    *,
    common: tuple[str, ...],
    write: Callable[[AnnData, Result, str], None],
    places: Callable[[str], list[tuple[str, str]]],
) -> Any:
    """Run ``verb`` on the arguments of its call (``args``): the four steps, for every verb.

    ``common`` names the verb's own arguments handed to the adapter (``genes``, ``scale``,
    ``labels_key``); ``args["options"]`` holds the method-only ones (checked against the
    adapter's); the arguments in :data:`INPUT_FIELDS` form the adapter's
    :class:`~scfound.tl._methods.Inputs`. Nothing is written before the adapter has returned,
    so a failure leaves the data as they were.
    """
    data, method, options = args["adata"], args["method"], args["options"]
    reference = args.get("reference")
    check_anndata(data, mudata=True)
    if reference is not None:
        check_anndata(reference, "reference", mudata=True)
    adapter = get_adapter(method, verb)
    check_options(method, verb, options, common)
    if reference is not None and not adapter.uses_reference:
        raise ValueError(
            f"method {method!r} does not read a `reference`; drop reference= or pick a method "
            f"that does: {[m for m, a in ADAPTERS.items() if a.uses_reference]}."
        )
    group_key = resolve_group_key(args["group_key"], args["sample_key"], f"tl.{verb}")
    inputs = {k: args[k] for k in INPUT_FIELDS if k in args}
    for name in ("model_kwargs", "train_kwargs"):
        inputs[name] = dict(inputs.get(name) or {})
    own = {k: args[k] for k in common}
    data = data.copy() if args["copy"] else data
    joint = verb == "embed" and adapter.embeds_mudata and isinstance(data, MuData)
    joint = joint and args["mod"] is None  # the whole MuData: its modalities are checked by mod
    adata = data if joint else modality(data, args["mod"])
    check_writable(adata, verb, args["key_added"], places(args["key_added"]), args)
    ref = None if reference is None else modality(reference, args["mod"], "reference")
    for name, part in data.mod.items() if joint else [(None, adata)]:
        where = "adata" if name is None else f"adata.mod[{name!r}]"
        check_cells_and_genes(part, where, min_obs=2)  # a cell is seen among others
    if ref is not None:
        check_cells_and_genes(ref, "reference", min_obs=2)
    if inputs.get("model") is None:
        for name, part in data.mod.items() if joint else [(None, adata)]:
            where = "adata" if name is None else f"adata.mod[{name!r}]"
            check_counts(part, inputs.get("layer"), adapter.model_class.__name__, where)
    if ref is not None:
        check_counts(ref, inputs.get("reference_layer"), adapter.model_class.__name__, "reference")
    result = getattr(adapter, verb)(
        Inputs(adata=adata, reference=ref, group_key=group_key, **inputs), **own, **options
    )
    write(adata, result, args["key_added"])
    recorded = {k: v for k, v in inputs.items() if k != "model"}
    params = {
        "method": method,
        "key_added": args["key_added"],
        "group_key": group_key,
        "reference": reference is not None,
        **recorded,
        **own,
        **options,
        **result.params,
        **summary(result.model),
    }
    record(adata, verb, args["key_added"], params)
    out = data if args["copy"] else None
    if args["return_model"]:
        return (out, result.model) if args["copy"] else result.model
    return out


def summary(model: object) -> dict[str, object]:
    """The model's description and final training losses, for the run record."""
    history = getattr(model, "history_", None) or {}
    out: dict[str, object] = {
        "model": getattr(model, "_model_summary_string", type(model).__name__)
    }
    for key in ("train_loss", "validation_loss"):
        if key in history and len(history[key]):
            out[f"final_{key}"] = float(np.asarray(history[key].iloc[-1, 0]))
            out["epochs"] = len(history[key])
    return out
