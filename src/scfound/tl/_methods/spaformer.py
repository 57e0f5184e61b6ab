"""SpaFormer behind the ``tl`` verbs: impute and embed the cells of a spatial section."""

from __future__ import annotations

from typing import Any, Literal

import pandas as pd
from anndata import AnnData
from lightning.pytorch import seed_everything

from scfound._utils import check_expression, check_genes_present, get_matrix, layer_name
from scfound.models import SpaFormer
from scfound.models.base import check_genes

from ._base import Inputs, MethodAdapter, Result
from ._minimal import TILE_KEY, add_tiles, minimal_anndata

#: training epochs of a SpaFormer fitted by the ``tl`` verbs
MAX_EPOCHS = 200


class SpaFormerAdapter(MethodAdapter):
    """:class:`~scfound.SpaFormer`: cells are tokens, a field of view is a sequence.

    Needs coordinates in ``obsm[spatial_key]``. Without ``group_key`` the section is cut into
    square tiles of about 500 cells (in the model's own AnnData; ``obs`` is not changed).
    A given ``model`` reads its genes by name: ``adata``'s genes are put in the model's order
    (in the model's own AnnData) when ``adata`` has exactly the model's genes, and refused,
    with the missing and unknown genes listed, otherwise; results follow ``adata``'s order.
    """

    name = "spaformer"
    model_class = SpaFormer

    def impute(
        self,
        inputs: Inputs,
        *,
        genes: list[str] | None,
        scale: Literal["counts", "log1p"],
        keep_observed: bool = False,
        batch_key: str | None = None,
    ) -> Result:
        """Reconstruct every measured gene of every cell in the context of its group.

        Parameters
        ----------
        inputs
            The verb's shared arguments.
        genes
            Measured genes to write (default all).
        scale
            ``"counts"``: the count scale of the input (each cell keeps its library size);
            ``"log1p"``: log-normalised.
        keep_observed
            Keep non-zero observed counts and impute zeros only; default replaces every entry by
            the model's reconstruction (denoised values).
        batch_key
            Column of ``obs`` with batches (a learned batch token per cell).
        """
        if genes is not None:
            check_genes_present(genes, inputs.adata.var_names, "adata.var_names")
        model, small = self._fit_or_reuse(inputs, batch_key)
        values = model.get_imputed_expression(
            small, genes=genes, scale=scale, keep_observed=keep_observed
        )
        if genes is None:  # the model's gene order back to the caller's
            values = values[inputs.adata.var_names]
        return Result(_frame(values, inputs.adata), model, {"keep_observed": keep_observed})

    def embed(self, inputs: Inputs, *, batch_key: str | None = None) -> Result:
        """Latent embedding of every cell (the posterior mean for the variational model).

        Parameters
        ----------
        inputs
            The verb's shared arguments.
        batch_key
            Column of ``obs`` with batches (a learned batch token per cell).
        """
        model, small = self._fit_or_reuse(inputs, batch_key)
        return Result(model.get_latent_representation(small), model)

    # ------------------------------------------------------------------ internals
    def _fit_or_reuse(self, inputs: Inputs, batch_key: str | None) -> tuple[SpaFormer, AnnData]:
        model = inputs.model
        if model is None:
            return self._fit(inputs, batch_key)
        if not isinstance(model, SpaFormer):
            raise TypeError(f"model must be a trained SpaFormer, not {type(model).__name__}.")
        # the given model reads the layer and keys it was set up with, unless the call names them
        args = model.adata_manager.registry["setup_args"]
        layer = inputs.layer if inputs.layer is not None else args.get("layer")
        group_key = inputs.group_key or args.get("group_key")
        spatial_key = args.get("spatial_key", "spatial")
        # checked here, before anything else, with the errors of setup_anndata on adata's names
        check_expression(get_matrix(inputs.adata, layer), layer_name(layer))
        # a model fitted here was trained on tiles: the new data is cut the same way
        tiles = group_key == TILE_KEY and TILE_KEY not in inputs.adata.obs
        small = minimal_anndata(
            inputs.adata,
            layer,
            obs_keys=(None if tiles else group_key, batch_key or args.get("batch_key")),
            spatial_key=spatial_key,
        )
        small = _in_model_order(small, model, args.get("layer"))
        if tiles:
            add_tiles(small, spatial_key)
        return model, small

    def _fit(self, inputs: Inputs, batch_key: str | None) -> tuple[SpaFormer, AnnData]:
        small = minimal_anndata(
            inputs.adata,
            inputs.layer,
            obs_keys=(inputs.group_key, batch_key),
            spatial_key=inputs.spatial_key,
        )
        group_key = inputs.group_key or add_tiles(small, inputs.spatial_key)
        seed_everything(inputs.seed, verbose=False)  # Python, NumPy and torch, quietly
        SpaFormer.setup_anndata(
            small,
            layer=inputs.layer,
            spatial_key=inputs.spatial_key,
            group_key=group_key,
            batch_key=batch_key,
        )
        model = SpaFormer(small, **inputs.model_kwargs)
        model.train(
            max_epochs=inputs.max_epochs or MAX_EPOCHS, seed=inputs.seed, **inputs.train_kwargs
        )
        return model, small


def _in_model_order(small: AnnData, model: SpaFormer, layer: str | None) -> AnnData:
    """``small`` (a minimal AnnData) with the genes and the layer name ``model`` reads.

    Parameters
    ----------
    small
        Minimal AnnData of the caller's data (never the caller's object).
    model
        The given model.
    layer
        The layer the model was set up with (``None``: ``.X``).

    Raises
    ------
    ValueError
        If ``small``'s genes are not the model's genes (in any order); the missing and the
        unknown genes are listed.
    """
    genes = pd.Index(model._model_genes()).astype(str)
    if not small.var_names.equals(genes):
        if set(small.var_names) != set(genes):
            try:
                check_genes(small.var_names, genes)
            except ValueError as err:
                raise ValueError(
                    f"{err} The given SpaFormer reads exactly the {len(genes)} genes it was "
                    "trained on (in any order: they are matched by name); select them with "
                    "adata[:, model.adata.var_names] when adata has them all."
                ) from None
        small = small[:, genes].copy()
    (stored,) = list(small.layers) or [None]
    if stored != layer:  # the caller named another layer than the model's: store it as the model's
        X = get_matrix(small, stored)
        small = AnnData(
            X=X if layer is None else None,
            obs=small.obs,
            var=small.var,
            obsm=dict(small.obsm),
            layers=None if layer is None else {layer: X},
        )
    return small


def _frame(values: Any, adata: AnnData) -> pd.DataFrame:
    """A cells x genes DataFrame indexed like ``adata`` (models return DataFrames)."""
    frame = values if isinstance(values, pd.DataFrame) else pd.DataFrame(values)
    frame.index = adata.obs_names.copy()
    return frame
