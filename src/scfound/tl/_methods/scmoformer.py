"""ScMoFormer behind the ``tl`` verbs: protein prediction from RNA."""

from __future__ import annotations

import torch
from mudata import MuData

from scfound.models import ScMoFormer

from ._base import Inputs, MethodAdapter, Result
from .scmognn import modality_kind, paired_mudata

#: training epochs of a ScMoFormer fitted by the ``tl`` verbs (early stopping usually ends sooner)
MAX_EPOCHS = 200


class ScMoFormerAdapter(MethodAdapter):
    """:class:`~scfound.ScMoFormer`: a graph transformer over cells, genes and proteins.

    Trains on the paired RNA and protein cells of ``reference`` and predicts the proteins of
    ``adata``'s cells from their RNA counts (genes matched by name). Only RNA -> protein.
    """

    name = "scmoformer"
    model_class = ScMoFormer
    uses_reference = True

    def predict_modality(
        self,
        inputs: Inputs,
        *,
        source: str,
        target: str,
        source_kind: str | None = None,
        target_kind: str | None = None,
    ) -> Result:
        """Predict the proteins (``target``) of every cell from its RNA (``source``) counts.

        Parameters
        ----------
        inputs
            The verb's shared arguments; ``inputs.reference`` is the paired MuData and
            ``inputs.model`` may be a trained ScMoFormer. Prior graphs and the other settings
            go through ``model_kwargs`` (e.g. ``{"protein_graph": "string_ppi.tsv"}``).
        source, target
            Modality names in ``reference`` (``adata`` holds the source).
        source_kind, target_kind
            What the modalities measure; default read from their names. They must be ``"rna"``
            and ``"protein"``.
        """
        skind = modality_kind(source, source_kind, "source")
        tkind = modality_kind(target, target_kind, "target")
        if (skind, tkind) != ("rna", "protein"):
            raise ValueError(
                f"method 'scmoformer' predicts proteins from RNA; source={source!r} is {skind!r} "
                f"and target={target!r} is {tkind!r}. Use method='scmognn' for other directions."
            )
        model = inputs.model
        if model is not None:
            if not isinstance(model, ScMoFormer):
                raise TypeError(f"model must be a trained ScMoFormer, not {type(model).__name__}.")
            if not model.is_trained_:
                raise ValueError("the given ScMoFormer is not trained; call model.train() first.")
        else:
            reference = inputs.reference
            if not isinstance(reference, MuData):
                raise TypeError(
                    "reference must be a MuData with the paired source and target modalities, "
                    f"got {type(reference).__name__}."
                )
            small = paired_mudata(reference, (source, target), inputs.reference_layer)
            layer = inputs.reference_layer
            ScMoFormer.setup_mudata(
                small,
                rna_layer=layer,
                protein_layer=layer,
                modalities={"rna_layer": source, "protein_layer": target},
            )
            torch.manual_seed(inputs.seed)  # the initial weights, so that `seed` fixes the result
            model = ScMoFormer(small, **inputs.model_kwargs)
            model.train(
                max_epochs=inputs.max_epochs or MAX_EPOCHS, seed=inputs.seed, **inputs.train_kwargs
            )
        values = model.predict(inputs.adata, layer=inputs.layer)
        values.index = inputs.adata.obs_names.copy()
        params = {"source_kind": skind, "target_kind": tkind, "graphs": model.graphs_}
        return Result(values, model, params)
