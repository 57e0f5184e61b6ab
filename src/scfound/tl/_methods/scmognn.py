"""ScMoGNN behind the ``tl`` verbs: modality prediction, modality matching, joint embedding."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from mudata import MuData

from scfound._utils import get_matrix
from scfound.models import ScMoGNN

from ._base import Inputs, MethodAdapter, Result
from ._matching import soft_matching
from ._minimal import minimal_anndata

#: training epochs of a ScMoGNN fitted by the ``tl`` verbs (early stopping usually ends sooner)
MAX_EPOCHS = 200

#: modality names read as each kind when ``source_kind``/``target_kind`` are not given
KIND_NAMES = {
    "rna": ("rna", "gex", "mrna", "gene", "genes", "expression"),
    "protein": ("adt", "prot", "protein", "proteins", "cite", "antibody"),
    "atac": ("atac", "peaks", "peak", "chromatin", "accessibility"),
}


def modality_kind(name: str, given: str | None, argument: str) -> str:
    """The kind (``"rna"``, ``"protein"``, ``"atac"``) of the modality ``name``.

    Raises
    ------
    ValueError
        If ``given`` is not a kind, or ``name`` is not a known name of one and ``given`` is
        ``None``.
    """
    if given is not None:
        if given not in KIND_NAMES:
            raise ValueError(f"{argument}_kind must be one of {list(KIND_NAMES)}, got {given!r}.")
        return given
    for kind, names in KIND_NAMES.items():
        if str(name).lower() in names:
            return kind
    raise ValueError(
        f"cannot tell what modality {name!r} measures; pass {argument}_kind= (one of "
        f"{list(KIND_NAMES)})."
    )


class ScMoGNNAdapter(MethodAdapter):
    """:class:`~scfound.ScMoGNN`: a graph network on the cell-feature graph of the source.

    Trains on the paired cells of ``reference`` (a MuData with the ``source`` and ``target``
    modalities) and predicts the target of ``adata``'s cells from their source counts; features
    are matched by name. A given ``model`` must have been trained for the same source and target
    kinds.
    """

    name = "scmognn"
    model_class = ScMoGNN
    uses_reference = True
    embeds_mudata = True

    def _fit(
        self,
        inputs: Inputs,
        reference: MuData,
        mods: tuple[str, str],
        kinds: tuple[str, str],
        layer: str | None,
        labels: pd.Series | None = None,
    ) -> ScMoGNN:
        """A given model checked for the direction, or a new one trained on ``reference``."""
        if inputs.model is not None:
            _check_model(inputs.model, *kinds)
            return inputs.model
        if not isinstance(reference, MuData):
            raise TypeError(
                "reference must be a MuData with the paired source and target modalities, "
                f"got {type(reference).__name__}."
            )
        small = paired_mudata(reference, mods, layer)
        setup = {f"{kinds[0]}_layer": layer, f"{kinds[1]}_layer": layer}
        modalities = {f"{kinds[0]}_layer": mods[0], f"{kinds[1]}_layer": mods[1]}
        if labels is not None:
            small.obs["labels"] = pd.Categorical(labels.loc[small.obs_names].to_numpy())
            setup["labels_key"] = "labels"
        ScMoGNN.setup_mudata(small, **setup, modalities=modalities)
        torch.manual_seed(inputs.seed)  # the initial weights, so that `seed` fixes the result
        model = ScMoGNN(small, source=kinds[0], target=kinds[1], **inputs.model_kwargs)
        model.train(
            max_epochs=inputs.max_epochs or MAX_EPOCHS, seed=inputs.seed, **inputs.train_kwargs
        )
        return model

    def predict_modality(
        self,
        inputs: Inputs,
        *,
        source: str,
        target: str,
        source_kind: str | None = None,
        target_kind: str | None = None,
        n_models: int = 1,
    ) -> Result:
        """Predict the ``target`` modality of every cell from its ``source`` counts.

        Parameters
        ----------
        inputs
            The verb's shared arguments; ``inputs.reference`` is the paired MuData. Its
            ``model`` may be a trained ScMoGNN or a list of them (an ensemble).
        source, target
            Modality names in ``reference`` (``adata`` holds the source).
        source_kind, target_kind
            What the modalities measure (``"rna"``, ``"protein"`` or ``"atac"``); default read
            from their names (``"rna"``/``"gex"``, ``"adt"``/``"protein"``, ``"atac"``/...).
        n_models
            Models trained with seeds ``seed, seed + 1, ...`` whose predictions are averaged
            (the thesis' seed ensemble); the model returned is then the list of them.
        """
        skind = modality_kind(source, source_kind, "source")
        tkind = modality_kind(target, target_kind, "target")
        if not isinstance(n_models, int | np.integer) or n_models < 1:
            raise ValueError(f"n_models must be a positive integer, got {n_models!r}.")
        if isinstance(inputs.model, list | tuple):
            if not inputs.model:
                raise ValueError("model is an empty list; pass trained ScMoGNN models or None.")
            models = list(inputs.model)
            for model in models:
                _check_model(model, skind, tkind)
        else:
            models = [
                self._fit(
                    replace(inputs, seed=inputs.seed + i),
                    inputs.reference,
                    (source, target),
                    (skind, tkind),
                    inputs.reference_layer,
                )
                for i in range(1 if inputs.model is not None else int(n_models))
            ]
        predictions = [m.predict(inputs.adata, layer=inputs.layer) for m in models]
        values = sum(predictions[1:], predictions[0]) / len(predictions)
        values.index = inputs.adata.obs_names.copy()
        params = {"source_kind": skind, "target_kind": tkind, "n_models": len(models)}
        return Result(values, models[0] if len(models) == 1 else models, params)

    def embed(
        self,
        inputs: Inputs,
        *,
        source: str | None = None,
        target: str | None = None,
        labels_key: str | None = None,
        source_kind: str | None = None,
        target_kind: str | None = None,
    ) -> Result:
        """Joint embedding of a paired MuData: ScMoGNN's cell states, trained across modalities.

        A ScMoGNN learns to predict ``target`` from ``source`` on the MuData's own cells
        (and, with ``labels_key``, their cell types through a classification head); the
        layer-weighted cell states (``n_hidden`` dimensions) are the embedding.

        Parameters
        ----------
        inputs
            The verb's shared arguments; ``inputs.adata`` is the MuData (200 epochs at most).
        source, target
            Modality names; default: the RNA modality (by name) as source and the other one as
            target (the MuData must then hold exactly two modalities).
        labels_key
            Column of ``mdata.obs`` (or of the source modality's ``obs``) with cell types;
            ``None``: unsupervised.
        source_kind, target_kind
            What the modalities measure; default read from their names.
        """
        mdata = inputs.adata
        if not isinstance(mdata, MuData):
            raise TypeError(
                "tl.embed(method='scmognn') embeds the paired modalities of a MuData (e.g. RNA and "
                f"ADT of CITE-seq); got {type(mdata).__name__}. Pass the MuData, not one modality."
            )
        source, target = _pick_modalities(mdata, source, target)
        skind = modality_kind(source, source_kind, "source")
        tkind = modality_kind(target, target_kind, "target")
        labels = None
        if labels_key is not None and inputs.model is None:
            labels = _labels(mdata, source, labels_key)
        model = self._fit(inputs, mdata, (source, target), (skind, tkind), inputs.layer, labels)
        cells = mdata.mod[source]
        z = model.get_latent_representation(cells, layer=inputs.layer)
        z = pd.DataFrame(z, index=cells.obs_names)
        missing = ~mdata.obs_names.isin(cells.obs_names)
        if missing.any():
            raise ValueError(
                f"{int(missing.sum())} cell(s) of the MuData (e.g. "
                f"{mdata.obs_names[missing][0]!r}) are not in modality {source!r}: the joint "
                "embedding needs every cell measured in both modalities "
                "(`muon.pp.intersect_obs(mdata)`)."
            )
        values = z.loc[mdata.obs_names].to_numpy()
        params = {"source": source, "target": target, "labels_key": labels_key}
        return Result(values, model, params)

    def match_modalities(
        self,
        inputs: Inputs,
        *,
        other: AnnData,
        other_layer: str | None,
        source: str,
        target: str,
        batch_key: str | None,
        hungarian: bool,
        top_k: int,
        source_kind: str | None = None,
        target_kind: str | None = None,
        temperature: float | None = None,
    ) -> Result:
        """Match each cell of ``adata`` (``source``) to the cells of ``other`` (``target``).

        A ScMoGNN trained on the paired ``reference`` predicts the ``target`` values of
        ``adata``'s cells; ``P[i, j]`` is the softmax over ``other``'s cells of
        ``-||prediction_i - measured_j||^2 / (2 * temperature)`` on the target's normalised
        scale: a Gaussian likelihood whose variance per feature, by default, is the model's
        validation mean squared error times the number of target features.

        Parameters
        ----------
        inputs
            The verb's shared arguments; ``inputs.reference`` is the paired MuData.
        other, other_layer
            The other modality's cells and the layer of their counts.
        source, target
            Names in ``reference`` of ``adata``'s and ``other``'s modality.
        batch_key, hungarian, top_k
            See :func:`scfound.tl.match_modalities`.
        source_kind, target_kind
            What the modalities measure; default read from their names.
        temperature
            Softmax temperature (``None``: the model's validation error, as above).
        """
        skind = modality_kind(source, source_kind, "source")
        tkind = modality_kind(target, target_kind, "target")
        model = self._fit(
            inputs, inputs.reference, (source, target), (skind, tkind), inputs.reference_layer
        )
        predicted = model.predict(inputs.adata, layer=inputs.layer)
        measured = _normalized_target(model, other, other_layer)
        if temperature is None:
            temperature = 0.5 * _validation_mse(model) * predicted.shape[1]
        batches = None
        if batch_key is not None:
            batches = (inputs.adata.obs[batch_key].to_numpy(), other.obs[batch_key].to_numpy())
        values = soft_matching(
            predicted.to_numpy(),
            measured,
            scale=2.0 * temperature,
            top_k=top_k,
            batches=batches,
            hungarian=hungarian,
        )
        params = {"source_kind": skind, "target_kind": tkind, "temperature": float(temperature)}
        return Result(values, model, params)


def paired_mudata(reference: MuData, mods: tuple[str, ...], layer: str | None) -> MuData:
    """A new MuData of ``mods`` that shares ``reference``'s counts, cells in one order.

    Raises
    ------
    KeyError
        If a modality is missing from ``reference``.
    ValueError
        If the modalities do not hold the same cells (unpaired data).
    """
    for mod in mods:
        if mod not in reference.mod:
            raise KeyError(
                f"modality {mod!r} not found in `reference` (modalities: {list(reference.mod)})."
            )
    first = reference.mod[mods[0]].obs_names
    parts = {}
    for mod in mods:
        bdata = reference.mod[mod]
        names = bdata.obs_names
        if not names.is_unique:
            raise ValueError(f"reference.mod[{mod!r}].obs_names has duplicated cell names.")
        if len(names) != len(first) or not names.isin(first).all():
            shared = int(names.isin(first).sum())
            raise ValueError(
                f"the cells of reference.mod[{mods[0]!r}] ({len(first)}) and "
                f"reference.mod[{mod!r}] ({len(names)}) are not paired ({shared} shared): "
                "modality prediction trains on cells measured in both; keep the shared ones "
                "(`muon.pp.intersect_obs(reference)`)."
            )
        if not names.equals(first):
            bdata = bdata[first].copy()  # put the cells in one order (the caller's stays)
        parts[mod] = minimal_anndata(bdata, layer)
    return MuData(parts)


def _pick_modalities(mdata: MuData, source: str | None, target: str | None) -> tuple[str, str]:
    """The source and target modality names of a joint embedding (RNA first by default)."""
    mods = list(mdata.mod)
    for argument, name in (("source", source), ("target", target)):
        if name is not None and name not in mdata.mod:
            raise KeyError(f"{argument}={name!r}: modality not found (modalities: {mods}).")
    if source is None:
        rest = [m for m in mods if m != target]
        rna = [m for m in rest if m.lower() in KIND_NAMES["rna"]]
        source = rna[0] if rna else (rest[0] if rest else None)
    if target is None:
        rest = [m for m in mods if m != source]
        if len(rest) != 1:
            raise ValueError(
                f"the MuData has modalities {mods}; pass source= and target= to pick the two "
                "to embed jointly."
            )
        target = rest[0]
    if source is None or source == target:
        raise ValueError(f"source and target must be two modalities of {mods}.")
    return source, target


def _labels(mdata: MuData, source: str, labels_key: str) -> pd.Series:
    """Cell types of every cell, from ``mdata.obs`` or the source modality's ``obs``."""
    for obs in (mdata.obs, mdata.mod[source].obs):
        if labels_key in obs.columns:
            labels = obs[labels_key]
            if labels.isna().any():
                raise ValueError(
                    f"labels_key={labels_key!r}: {int(labels.isna().sum())} cell(s) have no label; "
                    "the label head needs a label for every cell (or pass labels_key=None)."
                )
            return labels.astype(str)
    raise KeyError(
        f"labels_key={labels_key!r} is neither a column of mdata.obs nor of "
        f"mdata.mod[{source!r}].obs."
    )


def _normalized_target(model: ScMoGNN, other: AnnData, layer: str | None) -> np.ndarray:
    """``other``'s counts on the model's target scale, columns in the model's target order."""
    names = model.target_names
    position = other.var_names.get_indexer(names)
    if (position < 0).any():
        missing = list(names[position < 0][:3])
        raise ValueError(
            f"`other` lacks {int((position < 0).sum())} of the model's {len(names)} target "
            f"features (e.g. {missing}): its features must be those of the reference's target."
        )
    X = get_matrix(other, layer)
    X = X[:, position]
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    with torch.inference_mode():
        values = model.module.normalize_target(torch.as_tensor(X, dtype=torch.float32))
    return values.numpy()


def _validation_mse(model: ScMoGNN) -> float:
    """The model's best validation MSE (its training MSE when it had no validation cells).

    The reconstruction term alone: a label head's cross-entropy is not part of it.
    """
    history = getattr(model, "history_", None) or {}
    for key in ("reconstruction_loss_validation", "reconstruction_loss_train"):
        if key in history and len(history[key]):
            return float(np.nanmin(np.asarray(history[key], dtype=float)))
    return 1.0


def _check_model(model: object, source: str, target: str) -> None:
    if not isinstance(model, ScMoGNN):
        raise TypeError(f"model must be a trained ScMoGNN, not {type(model).__name__}.")
    if not model.is_trained_:
        raise ValueError("the given ScMoGNN model is not trained; call model.train() first.")
    if (model.source, model.target) != (source, target):
        raise ValueError(
            f"the given ScMoGNN predicts {model.target} from {model.source}, not {target} from "
            f"{source}: train a model for this direction (model=None)."
        )
