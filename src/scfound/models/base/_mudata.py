"""MuData setup shared by the multi-modal models (ScMoGNN, ScMoFormer, SAILERX).

A multi-modal scfound model is set up like scvi-tools' TOTALVI and MULTIVI::

    Model.setup_mudata(
        mdata,
        rna_layer="counts",
        protein_layer="counts",
        batch_key="batch",
        modalities={"rna_layer": "rna", "protein_layer": "adt", "batch_key": "rna"},
    )

``modalities`` maps an argument of ``setup_mudata`` to the name of the modality (a key of
``mdata.mod``) the argument refers to. The data arguments are named ``<kind>_layer`` after the
modality kinds of :data:`MODALITY_KINDS` (``rna_layer``, ``protein_layer``, ``atac_layer``); an
``obs`` key (``batch_key``, ``labels_key``) mapped to no modality is read from ``mdata.obs``.

The counts of each modality are registered raw. Each kind names the normalisation a model applies
to it (:data:`NORM_LOG1P_CP10K` for RNA, :data:`NORM_CLR` for proteins, :data:`NORM_TFIDF` or
:data:`NORM_BINARY` for ATAC); models compute it on their minibatches and never write it into the
user's object. Setting a model up only adds scvi-tools' own registry entries (``obs["_scvi_*"]``
columns of the modalities that hold the ``obs`` keys and of the protein modality, and
``uns["_scvi_uuid"]`` / ``uns["_scvi_manager_uuid"]``); scvi-tools may also store a layer as CSR
or C-contiguous (same values).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from mudata import MuData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager, fields

from ..._utils import check_expression, to_dense

__all__ = [
    "MODALITY_KINDS",
    "NORM_BINARY",
    "NORM_CLR",
    "NORM_LOG1P_CP10K",
    "NORM_TFIDF",
    "OBS_ARGS",
    "ModalityKind",
    "MuDataSetupMixin",
    "build_mudata_fields",
    "get_modality_matrix",
    "get_modality_var_names",
    "registered_modalities",
    "validate_mudata",
]

#: Library-size normalisation to 10,000 counts per cell, then ``log1p`` (RNA).
NORM_LOG1P_CP10K = "log1p_cp10k"
#: Centred log-ratio per cell (protein / ADT counts).
NORM_CLR = "clr"
#: Term frequency - inverse document frequency (ATAC peaks).
NORM_TFIDF = "tfidf"
#: Binarised accessibility, ``counts > 0`` (ATAC peaks).
NORM_BINARY = "binary"

#: ``setup_mudata`` arguments that name an ``obs`` column, registered as categorical fields.
OBS_ARGS: Mapping[str, str] = MappingProxyType(
    {"batch_key": REGISTRY_KEYS.BATCH_KEY, "labels_key": REGISTRY_KEYS.LABELS_KEY}
)


@dataclass(frozen=True)
class ModalityKind:
    """One kind of modality a model can register from a MuData.

    Attributes
    ----------
    name
        Kind name: ``"rna"``, ``"protein"`` or ``"atac"``.
    registry_key
        Key of its counts in the scvi-tools registry and in every minibatch ``tensors`` dict.
    normalizations
        Names of the normalisations a model may apply to it; the first is the default.
    description
        What the modality measures, for error messages and docs.
    """

    name: str
    registry_key: str
    normalizations: tuple[str, ...]
    description: str

    @property
    def layer_arg(self) -> str:
        """The ``setup_mudata`` argument naming its layer, ``"<name>_layer"``."""
        return f"{self.name}_layer"

    @property
    def default_normalization(self) -> str:
        """The normalisation a model applies unless told otherwise."""
        return self.normalizations[0]

    @property
    def n_vars_key(self) -> str:
        """Summary-stat key of its number of features (``"n_vars"`` for RNA)."""
        if self.registry_key == REGISTRY_KEYS.X_KEY:
            return "n_vars"
        return f"n_{self.registry_key}"


#: The modality kinds, keyed by name. Registry keys are scvi-tools' own (``"X"``, ``"proteins"``,
#: ``"atac"``), so stock scvi-tools modules and loaders read the same tensors.
MODALITY_KINDS: Mapping[str, ModalityKind] = MappingProxyType(
    {
        "rna": ModalityKind("rna", REGISTRY_KEYS.X_KEY, (NORM_LOG1P_CP10K,), "gene expression"),
        "protein": ModalityKind(
            "protein", REGISTRY_KEYS.PROTEIN_EXP_KEY, (NORM_CLR,), "surface protein (ADT) counts"
        ),
        "atac": ModalityKind(
            "atac", REGISTRY_KEYS.ATAC_X_KEY, (NORM_TFIDF, NORM_BINARY), "chromatin accessibility"
        ),
    }
)


# ---------------------------------------------------------------------------- validation
def _where(mod: str | None, attr: str = "obs") -> str:
    return f"mdata.{attr}" if mod is None else f"mdata.mod[{mod!r}].{attr}"


def _layer_where(mod: str, layer: str | None) -> str:
    base = f"mdata.mod[{mod!r}]"
    return f"{base}.X" if layer is None else f"{base}.layers[{layer!r}]"


def _check_is_mudata(mdata: Any) -> None:
    if isinstance(mdata, MuData):
        return
    if isinstance(mdata, AnnData):
        raise TypeError(
            "setup_mudata expects a MuData, got an AnnData. Wrap the modalities in one object "
            "first, e.g. `mudata.MuData({'rna': rna, 'adt': adt})` (cells in the same order), or "
            "use the model's setup_anndata for a single modality."
        )
    raise TypeError(f"setup_mudata expects a MuData, got {type(mdata).__name__}.")


def _data_kinds(setup_args: Mapping[str, Any]) -> list[ModalityKind]:
    """The modality kinds whose ``<kind>_layer`` argument the setup method has, in kind order."""
    return [kind for kind in MODALITY_KINDS.values() if kind.layer_arg in setup_args]


def _check_modalities(
    mdata: MuData, modalities: Mapping[str, str | None] | None, setup_args: Mapping[str, Any]
) -> dict[str, str | None]:
    """Complete ``modalities`` to one entry per setup argument, with clear errors."""
    available = list(mdata.mod.keys())
    data_args = [kind.layer_arg for kind in _data_kinds(setup_args)]
    example = dict(zip(data_args, available, strict=False))
    if modalities is None or not isinstance(modalities, Mapping):
        raise ValueError(
            "`modalities` must be a dict mapping setup_mudata arguments to modalities of mdata, "
            f"e.g. modalities={example!r} (available modalities: {available}); got "
            f"{modalities!r}."
        )
    unknown = [arg for arg in modalities if arg not in setup_args]
    if unknown:
        raise ValueError(
            f"`modalities` has keys {unknown} that are not arguments of setup_mudata; expected "
            f"some of {sorted(setup_args)}."
        )
    for arg, mod in modalities.items():
        if mod is None:
            continue
        if not isinstance(mod, str):
            raise TypeError(
                f"modalities[{arg!r}] must be the name of a modality (a str), got {mod!r}."
            )
        if mod not in mdata.mod:
            raise KeyError(
                f"modalities[{arg!r}] = {mod!r}, but mdata has no modality {mod!r} "
                f"(available modalities: {available})."
            )
    return {arg: modalities.get(arg) for arg in setup_args}


def _check_alignment(mdata: MuData, used: Sequence[str], partial: Sequence[str] = ()) -> None:
    """Every modality holds the same cells; the ones used are in ``mdata.obs_names`` order.

    Modalities named in ``partial`` may hold a subset of the cells (in any order).
    """
    if mdata.is_view or any(mdata.mod[m].is_view for m in mdata.mod):
        raise ValueError("mdata is a view (a subset); run `mdata = mdata.copy()` first.")
    if not mdata.obs_names.is_unique:
        raise ValueError(
            "mdata.obs_names has duplicated cell names; make them unique first "
            "(`mdata.obs_names_make_unique()`)."
        )
    for name, mod in mdata.mod.items():
        if name in partial:
            continue
        paired = mod.n_obs == mdata.n_obs and mod.obs_names.isin(mdata.obs_names).all()
        if not paired:
            raise ValueError(
                f"cells are not shared across modalities: mdata.mod[{name!r}] has {mod.n_obs} "
                f"cells, mdata has {mdata.n_obs}. Paired data are needed: keep the cells measured "
                "in every modality (`muon.pp.intersect_obs(mdata)`), or drop the modalities the "
                "model does not use."
            )
        if name in used and not mod.obs_names.equals(mdata.obs_names):
            raise ValueError(
                f"the cells of mdata.mod[{name!r}] are not in the order of mdata.obs_names, so "
                "rows of the modalities would not be the same cells. Reorder the modality "
                f"(`mdata.mod[{name!r}] = mdata.mod[{name!r}][mdata.obs_names].copy()`) or "
                "rebuild the MuData with its modalities in one order."
            )


def _check_obs_key(mdata: MuData, arg: str, key: str, mod: str | None) -> None:
    obs = mdata.obs if mod is None else mdata.mod[mod].obs
    where = _where(mod)
    if key not in obs.columns:
        hint = ""
        holders = [m for m in mdata.mod if key in mdata.mod[m].obs.columns]
        if mod is None and holders:
            hint = (
                f" It is a column of modality {holders[0]!r}: pass "
                f"modalities={{..., {arg!r}: {holders[0]!r}}}."
            )
        raise KeyError(
            f"{arg}={key!r}: column not found in {where} "
            f"(columns: {[str(c) for c in obs.columns]}).{hint}"
        )
    n_missing = int(pd.isna(obs[key]).sum())
    if n_missing:
        raise ValueError(
            f"{where}[{key!r}] (`{arg}`) has {n_missing} missing values; fill them with a "
            "category of their own (e.g. 'unknown') or drop those cells first."
        )


def validate_mudata(
    mdata: MuData,
    modalities: Mapping[str, str | None] | None,
    setup_args: Mapping[str, Any],
    *,
    required: Sequence[str] = (),
    check_counts: bool = True,
    partial: Sequence[str] = (),
) -> dict[str, str]:
    """Check that ``mdata`` can be registered as ``setup_args`` and ``modalities`` say.

    Nothing is written into ``mdata``.

    Parameters
    ----------
    mdata
        The multi-modal data.
    modalities
        Maps ``setup_mudata`` arguments to modality names (keys of ``mdata.mod``), e.g.
        ``{"rna_layer": "rna", "protein_layer": "adt", "batch_key": "rna"}``.
    setup_args
        The arguments of ``setup_mudata`` (``rna_layer``, ``protein_layer``, ``atac_layer``,
        ``batch_key``, ``labels_key``, ...) with their values; a ``<kind>_layer`` value of
        ``None`` means the modality's ``.X``.
    required
        Modality kinds (keys of :data:`MODALITY_KINDS`) that must be mapped.
    check_counts
        Raise on non-finite or negative values in a registered layer (counts are expected).
    partial
        Modalities (not registered) that may hold a subset of the cells, e.g. the RNA of
        SAILERX's hybrid training.

    Returns
    -------
    ``{kind: modality name}`` of the modalities to register, in :data:`MODALITY_KINDS` order.

    Raises
    ------
    TypeError
        If ``mdata`` is not a MuData (an AnnData, say).
    KeyError
        If a modality, a layer or an ``obs`` column named is missing (the error lists what there
        is).
    ValueError
        If ``modalities`` is malformed or lacks a required modality, the modalities do not hold
        the same cells in the same order, ``mdata`` is a view, an ``obs`` column has missing
        values, or counts are non-finite or negative.
    """
    _check_is_mudata(mdata)
    mods = _check_modalities(mdata, modalities, setup_args)
    kinds = _data_kinds(setup_args)
    unknown = [k for k in required if k not in MODALITY_KINDS]
    if unknown:
        raise ValueError(f"unknown modality kinds {unknown}; known: {list(MODALITY_KINDS)}.")
    for name in required:
        kind = MODALITY_KINDS[name]
        if kind.layer_arg not in setup_args:
            raise TypeError(
                f"setup_mudata must have a `{kind.layer_arg}` argument for modality kind {name!r}."
            )
        if mods[kind.layer_arg] is None:
            raise ValueError(
                f"this model needs {kind.description} ({name!r}): pass modalities="
                f"{{..., {kind.layer_arg!r}: <one of {list(mdata.mod)}>}}."
            )
    registered = {kind.name: mods[kind.layer_arg] for kind in kinds if mods[kind.layer_arg]}
    if not registered:
        raise ValueError(
            "no modality to register: map at least one of "
            f"{[kind.layer_arg for kind in kinds]} to a modality of mdata "
            f"(available: {list(mdata.mod)}) in `modalities`."
        )
    seen: dict[str, str] = {}
    for name, mod in registered.items():
        if mod in seen:
            raise ValueError(
                f"modality {mod!r} is mapped to both {seen[mod]!r} and {name!r}; each kind needs "
                "a modality of its own."
            )
        seen[mod] = name
    _check_alignment(mdata, [m for m in mods.values() if m is not None], partial)
    for name, mod in registered.items():
        layer = setup_args[MODALITY_KINDS[name].layer_arg]
        bdata = mdata.mod[mod]
        where = _layer_where(mod, layer)
        if layer is None:
            if bdata.X is None:
                raise ValueError(f"{where} is empty; pass `{name}_layer=` naming a counts layer.")
            X = bdata.X
        else:
            if layer not in bdata.layers:
                raise KeyError(
                    f"{name}_layer={layer!r}: layer not found in mdata.mod[{mod!r}].layers "
                    f"(available: {list(bdata.layers.keys())})."
                )
            X = bdata.layers[layer]
        if bdata.n_vars == 0:
            raise ValueError(f"mdata.mod[{mod!r}] has no features.")
        if check_counts:
            check_expression(X, where, counts=True)
    for arg in OBS_ARGS:
        key = setup_args.get(arg)
        if key is not None:
            _check_obs_key(mdata, arg, key, mods.get(arg))
    return registered


# ---------------------------------------------------------------------------- fields
def build_mudata_fields(
    setup_args: Mapping[str, Any],
    modalities: Mapping[str, str | None],
    *,
    protein_batch_mask: bool = True,
) -> list:
    """The scvi-tools fields of a multi-modal setup, in registration order.

    Always a batch field (:data:`scvi.REGISTRY_KEYS.BATCH_KEY`) and a labels field
    (``LABELS_KEY``), all zeros when their key is ``None``, then one counts field per mapped
    modality kind under its :attr:`ModalityKind.registry_key`.

    Parameters
    ----------
    setup_args
        The arguments of ``setup_mudata`` and their values.
    modalities
        ``setup_mudata`` argument -> modality name (validated, see :func:`validate_mudata`).
    protein_batch_mask
        Register proteins with :class:`scvi.data.fields.MuDataProteinLayerField`, which records
        which proteins each batch measured (batches with a smaller panel); otherwise a plain
        :class:`~scvi.data.fields.MuDataLayerField`.

    Returns
    -------
    A list of :mod:`scvi.data.fields` instances for an :class:`~scvi.data.AnnDataManager`.
    """
    obs_fields = {
        arg: fields.MuDataCategoricalObsField(
            registry_key, setup_args.get(arg), mod_key=modalities.get(arg)
        )
        for arg, registry_key in OBS_ARGS.items()
    }
    out = list(obs_fields.values())
    for kind in _data_kinds(setup_args):
        mod = modalities.get(kind.layer_arg)
        if mod is None:
            continue
        layer = setup_args[kind.layer_arg]
        if kind.name == "protein" and protein_batch_mask:
            field = fields.MuDataProteinLayerField(
                kind.registry_key,
                layer,
                mod_key=mod,
                use_batch_mask=True,
                batch_field=obs_fields["batch_key"],
                is_count_data=True,
                mod_required=True,
            )
        else:
            field = fields.MuDataLayerField(
                kind.registry_key, layer, mod_key=mod, is_count_data=True, mod_required=True
            )
        out.append(field)
    return out


class MuDataSetupMixin:
    """``setup_mudata`` plumbing for multi-modal scvi-tools models.

    Put it before :class:`~scvi.model.base.BaseModelClass` in the bases. A model writes its own
    ``setup_mudata`` (its signature and docstring are the model's), records its arguments and
    hands over to :meth:`_register_mudata`::

        class ScMoGNN(MuDataSetupMixin, UnsupervisedTrainingMixin, BaseModelClass):
            _required_modalities = ("rna",)

            @classmethod
            def setup_mudata(
                cls,
                mdata,
                rna_layer=None,
                protein_layer=None,
                atac_layer=None,
                batch_key=None,
                labels_key=None,
                modalities=None,
                **kwargs,
            ):
                setup_method_args = cls._get_setup_method_args(**locals())
                cls._register_mudata(mdata, setup_method_args, modalities, **kwargs)

    The registry then holds ``"batch"``, ``"labels"`` and, for every mapped kind, its counts
    under :attr:`ModalityKind.registry_key` (``"X"``, ``"proteins"``, ``"atac"``); summary stats
    ``n_vars``, ``n_proteins``, ``n_atac``, ``n_batch``, ``n_labels``, ``n_cells``.

    The mixin also supplies a ``setup_anndata`` that explains that the model needs a MuData;
    a model that also takes a single-modality AnnData overrides it.
    """

    #: Modality kinds every setup of the model must map.
    _required_modalities: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def setup_anndata(cls, adata: AnnData, *args: Any, **kwargs: Any) -> None:
        """Not available: this model is multi-modal; use ``setup_mudata``.

        Raises
        ------
        TypeError
            Always.
        """
        raise TypeError(
            f"{cls.__name__} takes several modalities: build a MuData and call "
            f"{cls.__name__}.setup_mudata(mdata, ..., modalities={{'rna_layer': 'rna', ...}})."
        )

    @classmethod
    def _register_mudata(
        cls,
        mdata: MuData,
        setup_method_args: dict,
        modalities: Mapping[str, str | None] | None,
        *,
        required: Sequence[str] | None = None,
        extra_fields: Sequence = (),
        protein_batch_mask: bool = True,
        check_counts: bool = True,
        partial: Sequence[str] = (),
        **kwargs: Any,
    ) -> AnnDataManager:
        """Validate ``mdata``, build the fields, register them and the manager with ``cls``.

        Parameters
        ----------
        mdata
            The multi-modal data.
        setup_method_args
            ``cls._get_setup_method_args(**locals())`` from the first line of ``setup_mudata``.
        modalities
            The ``modalities`` argument of ``setup_mudata``.
        required
            Modality kinds that must be mapped; default ``cls._required_modalities``.
        extra_fields
            Further scvi-tools fields of the model (size factors, covariates, ...), registered
            after the standard ones.
        protein_batch_mask
            See :func:`build_mudata_fields`.
        check_counts, partial
            See :func:`validate_mudata`.
        **kwargs
            Passed to :meth:`~scvi.data.AnnDataManager.register_fields` (``source_registry``
            and transfer options when a model is loaded or a query is mapped).

        Returns
        -------
        The registered manager.
        """
        setup_args = setup_method_args["setup_args"]
        if required is None:
            required = cls._required_modalities
        validate_mudata(
            mdata,
            modalities,
            setup_args,
            required=required,
            check_counts=check_counts,
            partial=partial,
        )
        mods = _check_modalities(mdata, modalities, setup_args)
        mudata_fields = build_mudata_fields(
            setup_args, mods, protein_batch_mask=protein_batch_mask
        ) + list(extra_fields)
        adata_manager = AnnDataManager(fields=mudata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(mdata, **kwargs)
        cls.register_manager(adata_manager)
        return adata_manager


# ---------------------------------------------------------------------------- access
def _kind(kind: str) -> ModalityKind:
    if kind not in MODALITY_KINDS:
        raise ValueError(f"unknown modality kind {kind!r}; known: {list(MODALITY_KINDS)}.")
    return MODALITY_KINDS[kind]


def registered_modalities(adata_manager: AnnDataManager) -> dict[str, str]:
    """``{kind: modality name}`` of the modalities registered with a manager.

    Parameters
    ----------
    adata_manager
        A manager set up by :meth:`MuDataSetupMixin._register_mudata` (``model.adata_manager``).
    """
    registry = adata_manager.data_registry
    out = {}
    for kind in MODALITY_KINDS.values():
        if kind.registry_key in registry:
            out[kind.name] = registry[kind.registry_key].get("mod_key")
    return out


def get_modality_matrix(
    adata_manager: AnnDataManager, kind: str, *, dense: bool = False
) -> np.ndarray | sp.spmatrix:
    """The registered counts of one modality, rows in ``mdata.obs_names`` order.

    Parameters
    ----------
    adata_manager
        A manager set up by :meth:`MuDataSetupMixin._register_mudata` (``model.adata_manager``).
    kind
        ``"rna"``, ``"protein"`` or ``"atac"``.
    dense
        Return a dense ``float32`` copy; otherwise the stored matrix itself (often sparse).

    Returns
    -------
    The cells x features matrix of that modality (raw counts, not normalised).

    Raises
    ------
    KeyError
        If the kind was not registered.
    """
    spec = _kind(kind)
    if spec.registry_key not in adata_manager.data_registry:
        raise KeyError(
            f"modality kind {kind!r} is not registered (registered: "
            f"{list(registered_modalities(adata_manager))}); map `{spec.layer_arg}` in "
            "setup_mudata(..., modalities=...)."
        )
    X = adata_manager.get_from_registry(spec.registry_key)
    return to_dense(X) if dense else X


def get_modality_var_names(adata_manager: AnnDataManager, kind: str) -> pd.Index:
    """Feature names (genes, proteins, peaks) of one registered modality, as registered.

    Parameters
    ----------
    adata_manager
        A manager set up by :meth:`MuDataSetupMixin._register_mudata`.
    kind
        ``"rna"``, ``"protein"`` or ``"atac"``.
    """
    spec = _kind(kind)
    if spec.registry_key not in adata_manager.data_registry:
        raise KeyError(
            f"modality kind {kind!r} is not registered (registered: "
            f"{list(registered_modalities(adata_manager))})."
        )
    names = adata_manager.get_state_registry(spec.registry_key)["column_names"]
    return pd.Index(np.asarray(names).astype(str))
