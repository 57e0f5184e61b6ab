"""SAILER behind the ``tl`` verbs: depth- and batch-invariant scATAC-seq embeddings and profiles."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from anndata import AnnData

from scfound.models import SAILER

from ._base import Inputs, MethodAdapter, Result
from ._minimal import minimal_anndata

#: epochs of a model trained by a verb (the paper trains 400 on GPU)
DEFAULT_EPOCHS = 100


class SAILERAdapter(MethodAdapter):
    """:class:`~scfound.SAILER` on a cells x peaks AnnData of scATAC-seq counts.

    The confounders are the read depth (always) and the batch: ``batch_key`` names it, or else
    ``group_key`` (the samples) is taken as the batch. A given ``model`` is applied to
    ``adata`` (same peaks in the same order, and the batches it knows).
    """

    name = "sailer"
    model_class = SAILER

    def embed(
        self,
        inputs: Inputs,
        *,
        batch_key: str | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
    ) -> Result:
        """Posterior means of SAILER's latent space (10 dimensions by default).

        Parameters
        ----------
        inputs
            The verb's shared arguments (``max_epochs`` default 100).
        batch_key
            Column of ``adata.obs`` with batches, a confounder removed from the embedding
            (default ``group_key``).
        continuous_covariate_keys
            Numeric ``obs`` columns with further confounders.
        """
        model, small = self._fit_or_reuse(inputs, batch_key, continuous_covariate_keys)
        return Result(model.get_latent_representation(small), model)

    def denoise(
        self,
        inputs: Inputs,
        *,
        scale: Literal["counts", "log1p"],
        batch_key: str | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
        reference_batch: str | None = None,
    ) -> Result:
        """Accessibility probabilities at the mean depth and in one reference batch.

        SAILER's output is the probability that each peak is accessible, whatever ``scale``
        says (ATAC profiles are binary).

        Parameters
        ----------
        inputs
            The verb's shared arguments (``max_epochs`` default 100).
        scale
            Not used: the values are probabilities.
        batch_key
            Column of ``adata.obs`` with batches (default ``group_key``).
        continuous_covariate_keys
            Numeric ``obs`` columns with further confounders.
        reference_batch
            Batch whose profile every cell gets (default the deepest batch).
        """
        model, small = self._fit_or_reuse(inputs, batch_key, continuous_covariate_keys)
        values = model.get_accessibility_estimates(small, reference_batch=reference_batch)
        values.index = inputs.adata.obs_names.copy()
        values.columns = inputs.adata.var_names.copy()
        return Result(values, model, {"values": "accessibility probabilities"})

    # ------------------------------------------------------------------ internals
    def _fit_or_reuse(
        self,
        inputs: Inputs,
        batch_key: str | None,
        continuous_covariate_keys: Sequence[str] | None,
    ) -> tuple[SAILER, AnnData]:
        model = inputs.model
        if model is not None:
            if not isinstance(model, SAILER):
                raise TypeError(f"model must be a trained SAILER, not {type(model).__name__}.")
            setup = model.adata_manager.registry["setup_args"]
            layer, batch_key = setup.get("layer"), setup.get("batch_key")
            continuous_covariate_keys = setup.get("continuous_covariate_keys")
        else:
            layer = inputs.layer
            batch_key = batch_key if batch_key is not None else inputs.group_key
        keys = [batch_key, *(continuous_covariate_keys or [])]
        small = minimal_anndata(inputs.adata, layer, obs_keys=keys)
        if model is not None:
            return model, small
        SAILER.setup_anndata(
            small,
            layer=layer,
            batch_key=batch_key,
            continuous_covariate_keys=continuous_covariate_keys,
        )
        torch.manual_seed(inputs.seed)  # the initial weights, so that `seed` fixes the result
        fitted = SAILER(small, **inputs.model_kwargs)
        max_epochs = DEFAULT_EPOCHS if inputs.max_epochs is None else inputs.max_epochs
        fitted.train(max_epochs=max_epochs, seed=inputs.seed, **inputs.train_kwargs)
        return fitted, small
