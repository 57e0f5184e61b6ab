"""ExpressionTransformer behind the ``tl`` verbs: gene embeddings, cell embeddings, denoising."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from scfound._utils import get_matrix
from scfound.models import ExpressionTransformer

from ._base import Inputs, MethodAdapter, Result
from ._minimal import minimal_anndata

#: training epochs of a model trained by a verb (small preset, CPU)
DEFAULT_EPOCHS = 20

#: step size of a model trained by a verb (the thesis's 1e-4 is for millions of cells)
DEFAULT_LR = 1e-3


class ExpressionTransformerAdapter(MethodAdapter):
    """:class:`~scfound.ExpressionTransformer` (gene tokens; a cell is its non-zero genes).

    ``model`` may be a trained or pre-trained ExpressionTransformer, applied to ``adata``'s
    genes by name (genes outside its vocabulary are ignored; ``fine_tune`` trains it further
    on ``adata`` first), or ``None``: a model of the ``"small"`` preset is trained on ``adata``
    for ``max_epochs`` (default 20) at a step size of 1e-3.
    """

    name = "exprformer"
    model_class = ExpressionTransformer
    default_scale = "log1p"

    def embed(
        self, inputs: Inputs, *, gene_key: str | None = None, fine_tune: bool = False
    ) -> Result:
        """Cell embeddings: the mean contextual embedding of each cell's non-zero genes.

        Parameters
        ----------
        inputs
            The verb's shared arguments.
        gene_key
            Column of ``adata.var`` with the model's gene identifiers (default ``var_names``).
        fine_tune
            Train a given model further on ``adata`` for ``max_epochs`` first.
        """
        model, small = self._fit(inputs, gene_key, fine_tune)
        return Result(model.get_latent_representation(small), model)

    def embed_genes(
        self, inputs: Inputs, *, gene_key: str | None = None, fine_tune: bool = False
    ) -> Result:
        """Gene embeddings from the gene-token table, one row per gene of ``adata``.

        Genes the model's vocabulary lacks get NaN rows and a warning with their count.

        Parameters
        ----------
        inputs
            The verb's shared arguments.
        gene_key
            Column of ``adata.var`` with the model's gene identifiers (default ``var_names``).
        fine_tune
            Train a given model further on ``adata`` for ``max_epochs`` first.
        """
        model, small = self._fit(inputs, gene_key, fine_tune)
        genes = small.var_names if gene_key is None else small.var[gene_key]
        frame = model.get_gene_embeddings(np.asarray(genes).astype(str).tolist())
        frame.index = inputs.adata.var_names.copy()
        return Result(frame, model)

    def denoise(
        self,
        inputs: Inputs,
        *,
        scale: Literal["counts", "log1p"],
        gene_key: str | None = None,
        fine_tune: bool = False,
        query_layer: str | None = None,
        n_folds: int = 4,
    ) -> Result:
        """Each non-zero value predicted from the cell's other genes; dropped values imputed.

        Zeros stay 0 (the model reads and predicts non-zero values only) unless
        ``query_layer`` marks them: those entries (e.g. the ``layers["heldout"]`` mask of
        :func:`scfound.pp.mask_entries`, with ``layer="heldout_counts"``) are predicted as
        masked genes of their cells, the thesis's imputation of dropped values. Genes outside
        the vocabulary are NaN.

        Parameters
        ----------
        inputs
            The verb's shared arguments.
        scale
            ``"log1p"`` (log-normalised to 1e4, the model's space) or ``"counts"`` (at each
            cell's library size).
        gene_key
            Column of ``adata.var`` with the model's gene identifiers (default ``var_names``).
        fine_tune
            Train a given model further on ``adata`` for ``max_epochs`` first.
        query_layer
            Layer of ``adata`` marking (non-zero / ``True``) the entries to impute.
        n_folds
            Folds of the leave-out prediction of the non-zero values.
        """
        query = None
        if query_layer is not None:
            query = get_matrix(inputs.adata, query_layer)
            query = (query != 0).toarray() if sp.issparse(query) else np.asarray(query) != 0
        model, small = self._fit(inputs, gene_key, fine_tune)
        values = model.get_denoised_expression(small, n_folds=n_folds, scale=scale)
        if query is not None:
            imputed = model.get_denoised_expression(small, query=query, scale=scale)
            values = np.where(query, imputed, values)
        known = model.module.input_genes.cpu().numpy() >= 0
        values = np.where(np.isnan(values) & known[None, :], 0.0, values).astype(np.float32)
        frame = pd.DataFrame(
            values, index=inputs.adata.obs_names.copy(), columns=inputs.adata.var_names.copy()
        )
        return Result(frame, model, {"query_layer": query_layer})

    # ------------------------------------------------------------------ internals
    def _fit(
        self, inputs: Inputs, gene_key: str | None, fine_tune: bool
    ) -> tuple[ExpressionTransformer, AnnData]:
        """The model for ``adata`` (given, carried over, trained) and its registered AnnData."""
        small = minimal_anndata(inputs.adata, inputs.layer, var_keys=(gene_key,))
        ExpressionTransformer.setup_anndata(small, layer=inputs.layer, gene_key=gene_key)
        max_epochs = DEFAULT_EPOCHS if inputs.max_epochs is None else inputs.max_epochs
        train_kwargs: dict[str, Any] = {
            "seed": inputs.seed,
            "lr": DEFAULT_LR,
            **inputs.train_kwargs,
        }
        torch.manual_seed(inputs.seed)  # the initial weights, so that `seed` fixes the result
        if inputs.model is None:
            model = ExpressionTransformer(small, **inputs.model_kwargs)
            model.train(max_epochs=max_epochs, **train_kwargs)
            return model, small
        model = ExpressionTransformer.from_model(inputs.model, small, **inputs.model_kwargs)
        if fine_tune:
            model.train(max_epochs=max_epochs, **train_kwargs)
        return model, small
