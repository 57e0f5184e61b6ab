"""What a method adapter is: the bridge between one model class and the ``tl`` verbs.

An adapter says which verbs its method supports (the verb methods it defines), prepares the minimal
AnnData its model needs, trains a model or reuses a given one, and returns arrays. It never writes
into the user's object: the verbs write the results to the places fixed for them
(:mod:`scfound._keys`) and record the run.

Options that only one method understands are keyword-only arguments of the adapter's verb method,
with defaults, documented in its docstring; the verbs accept them as ``**options`` and refuse a
name the adapter does not declare.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from anndata import AnnData
from scvi.model.base import BaseModelClass

#: the verbs of :mod:`scfound.tl`; an adapter supports those it defines a method for
VERBS = (
    "impute",
    "embed",
    "annotate",
    "denoise",
    "predict_modality",
    "match_modalities",
    "embed_genes",
)


@dataclass
class Inputs:
    """The arguments every verb shares, as one object handed to an adapter.

    Attributes
    ----------
    adata
        The cells to process (a modality of a MuData is passed as its AnnData). Adapters read it
        and never write into it.
    layer
        Layer of ``adata`` with raw counts; ``None`` reads ``.X``.
    spatial_key
        Key of coordinates in ``adata.obsm`` (used when present and the method reads them).
    group_key
        Column of ``adata.obs`` with the cells processed together (fields of view, samples).
    reference
        A second dataset (scRNA-seq reference), or ``None``.
    reference_layer
        Layer of ``reference`` with raw counts.
    model
        A trained model to apply (or, for some methods, a checkpoint to start from); ``None``
        trains one.
    max_epochs
        Training epochs; ``None`` takes the adapter's default.
    seed
        Seed of the initial weights and of training.
    model_kwargs, train_kwargs
        Passed to the model class and to its ``train``.
    """

    adata: AnnData
    layer: str | None = None
    spatial_key: str = "spatial"
    group_key: str | None = None
    reference: AnnData | None = None
    reference_layer: str | None = None
    model: Any = None
    max_epochs: int | None = None
    seed: int = 0
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    train_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def has_spatial(self) -> bool:
        """Whether ``adata.obsm[spatial_key]`` exists."""
        return self.spatial_key in self.adata.obsm

    def need_reference(self, method: str, verb: str) -> AnnData:
        """The reference, or a clear error that ``method`` needs one for ``verb``."""
        if self.reference is None:
            raise ValueError(
                f"method {method!r} needs a `reference` for tl.{verb}; pass reference= (an "
                "AnnData with raw counts of the same tissue)."
            )
        return self.reference


@dataclass
class Result:
    """What an adapter hands back to a verb.

    Attributes
    ----------
    values
        ``impute``/``denoise``: cells x genes DataFrame; ``embed``: cells x dimensions array;
        ``annotate``: cells x classes DataFrame of probabilities.
    model
        The model that produced them (trained here or given).
    params
        Settings of the run worth recording (chosen defaults included).
    """

    values: pd.DataFrame | np.ndarray
    model: BaseModelClass
    params: dict[str, Any] = field(default_factory=dict)


class MethodAdapter:
    """Base class of the method adapters; subclasses define one method per supported verb.

    Subclasses set :attr:`name` and :attr:`model_class` and implement any of ``impute(inputs, *,
    genes, scale, ...)``, ``embed(inputs, ...)``, ``annotate(inputs, *, labels_key, ...)`` and
    ``denoise(inputs, *, scale, ...)``, each returning a :class:`Result`.
    """

    #: the ``method=`` name of the verbs
    name: ClassVar[str]
    #: the scvi-tools model class behind the method
    model_class: ClassVar[type[BaseModelClass]]
    #: whether the method reads a second dataset (``reference=``); if not, passing one is an error
    uses_reference: ClassVar[bool] = False
    #: whether ``embed`` of a MuData (without ``mod=``) embeds all its modalities jointly and
    #: writes to the MuData's own ``obsm``
    embeds_mudata: ClassVar[bool] = False
    #: scale of ``impute``/``denoise`` when the caller passes none (``"counts"`` or ``"log1p"``)
    default_scale: ClassVar[str] = "counts"

    @classmethod
    def verbs(cls) -> tuple[str, ...]:
        """The verbs this method supports."""
        return tuple(v for v in VERBS if callable(getattr(cls, v, None)))

    @classmethod
    def options(cls, verb: str, common: tuple[str, ...]) -> dict[str, Any]:
        """Method-only options of ``verb`` (name -> default): its keywords beyond ``common``."""
        params = inspect.signature(getattr(cls, verb)).parameters
        skip = {"self", "inputs", *common}
        return {
            name: p.default
            for name, p in params.items()
            if name not in skip and p.kind is inspect.Parameter.KEYWORD_ONLY
        }
