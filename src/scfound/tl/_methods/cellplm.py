"""CellPLM behind the ``tl`` verbs: embed, denoise, impute from a reference, annotate."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from scfound._constants import CORPUS_DATASET_KEY, CORPUS_SAMPLE_KEY
from scfound._utils import check_genes_present, get_obs_column
from scfound.models import CellPLM
from scfound.pp import build_corpus

from ._base import Inputs, MethodAdapter, Result
from ._minimal import minimal_anndata

#: architecture of a CellPLM trained from scratch by the ``tl`` verbs (CPU-sized)
SMALL_CELLPLM = {"n_hidden": 256, "n_layers": 2, "n_latent": 64, "n_decoder_hidden": 256}

#: training epochs by verb when ``max_epochs`` is not given (annotation: from scratch)
MAX_EPOCHS = {"embed": 200, "impute": 200, "denoise": 50, "annotate": 50}

#: epochs of self-supervised adaptation of a pre-trained model before it is fine-tuned to annotate
ADAPT_EPOCHS = 60

#: step size of the self-supervised adaptation of a pre-trained model before annotation
ADAPT_LR = 1e-3

#: step size of fine-tuning a pre-trained model (after its head was fitted) for annotation
FINE_TUNE_LR = 3e-4

#: epochs of fine-tuning a pre-trained model for annotation
FINE_TUNE_EPOCHS = 20

#: step size of training an annotation model from scratch (as the authors' annotation pipeline)
SCRATCH_LR = 5e-3

#: label of the cells to predict in the model's own AnnData
UNKNOWN = "unknown"

#: ``obs`` column of the labels in the model's own AnnData
LABELS = "labels"


class CellPLMAdapter(MethodAdapter):
    """:class:`~scfound.CellPLM`: cells are tokens, a tissue sample (``group_key``) a sentence.

    ``model`` may be a trained :class:`~scfound.CellPLM` (applied zero-shot, or fine-tuned where a
    verb says so), the prefix of a checkpoint in the authors' layout, or ``None`` (a CPU-sized
    model, :data:`SMALL_CELLPLM`, is trained on the data). Coordinates in
    ``obsm[spatial_key]`` are used when present.
    """

    name = "cellplm"
    model_class = CellPLM
    uses_reference = True

    def embed(
        self, inputs: Inputs, *, gene_key: str | None = None, fine_tune: bool = False
    ) -> Result:
        """Cell embeddings (posterior means).

        Parameters
        ----------
        inputs
            The verb's shared arguments (``max_epochs`` default 200).
        gene_key
            Column of ``var`` with the model's gene identifiers (default ``var_names``).
        fine_tune
            Train a given model further on ``adata`` for ``max_epochs`` first.
        """
        small = self._input(inputs, gene_key)
        model = self._fit(inputs, small, "embed", gene_key=gene_key, fine_tune=fine_tune)
        return Result(model.get_latent_representation(small), model)

    def denoise(
        self,
        inputs: Inputs,
        *,
        scale: Literal["counts", "log1p"],
        gene_key: str | None = None,
        fine_tune: bool = False,
    ) -> Result:
        """Reconstructed expression of every cell; genes outside the vocabulary are NaN.

        Parameters
        ----------
        inputs
            The verb's shared arguments (``max_epochs`` default 50).
        scale
            ``"counts"`` (at each cell's library size) or ``"log1p"`` (log-normalised to 1e4).
        gene_key
            Column of ``var`` with the model's gene identifiers (default ``var_names``).
        fine_tune
            Train a given model further on ``adata`` for ``max_epochs`` first.
        """
        small = self._input(inputs, gene_key)
        model = self._fit(inputs, small, "denoise", gene_key=gene_key, fine_tune=fine_tune)
        values = model.get_denoised_expression(small, scale=scale)
        frame = pd.DataFrame(values, index=inputs.adata.obs_names.copy())
        frame.columns = inputs.adata.var_names.copy()
        return Result(frame, model)

    def impute(
        self,
        inputs: Inputs,
        *,
        genes: list[str] | None,
        scale: Literal["counts", "log1p"],
        gene_key: str | None = None,
        reference_group_key: str | None = None,
    ) -> Result:
        """Decode the genes a spatial panel lacks from a corpus joined with a ``reference``.

        Both datasets form one corpus (each scored only on the genes it measured); a given model
        is fine-tuned on it (a new one trained from scratch) and the query cells' decoded values
        at the reference-only genes are returned.

        Parameters
        ----------
        inputs
            The verb's shared arguments (``max_epochs`` default 200).
        genes
            Reference genes to impute (default every reference gene ``adata`` lacks).
        scale
            ``"counts"`` (at each cell's depth) or ``"log1p"`` (log-normalised to 1e4).
        gene_key
            Column of ``var`` (of both objects) with gene identifiers to match on.
        reference_group_key
            Column of ``reference.obs`` with its samples (default: one sample).
        """
        reference = inputs.need_reference(self.name, "impute")
        corpus = self._corpus(inputs, reference, gene_key, reference_group_key)
        measured = corpus.varm["measured"]
        if genes is None:
            genes = list(measured.index[~measured["query"] & measured["reference"]])
        else:
            genes = check_genes_present(
                genes, measured.index[measured["reference"]], "the reference"
            )
        if not genes:
            raise ValueError("the reference measures no gene that adata lacks; nothing to impute.")
        model = self._fit(inputs, corpus, "impute", gene_key=None, fine_tune=True)
        values = model.get_imputed_expression(corpus, genes=genes, scale=scale)
        query = (corpus.obs[CORPUS_DATASET_KEY] == "query").to_numpy()
        frame = values.loc[query]
        frame.index = inputs.adata.obs_names.copy()
        return Result(frame, model)

    def annotate(
        self,
        inputs: Inputs,
        *,
        labels_key: str,
        fine_tune: Literal["model", "head"] = "model",
        adapt_epochs: int | None = None,
        unlabeled_category: str = UNKNOWN,
        gene_key: str | None = None,
        reference_group_key: str | None = None,
    ) -> Result:
        """Fine-tune with a classification head, or fit the head alone (a linear probe).

        Either ``adata.obs[labels_key]`` labels some cells (the others are
        ``unlabeled_category`` or missing) and all are predicted, or a labelled ``reference``
        is joined with ``adata`` (genes matched by name) and every cell of ``adata`` is
        predicted. With a given ``model``, ``adapt_epochs`` of self-supervised training on all
        cells come first; fine-tuning then starts from the fitted head (a linear probe, then the
        whole model at :data:`FINE_TUNE_LR`: "LP-FT", Kumar et al., ICLR 2022).

        Parameters
        ----------
        inputs
            The verb's shared arguments (``max_epochs`` default 50 from scratch, 20 when
            fine-tuning a given model).
        labels_key
            Column of ``obs`` (of ``adata``, or of ``reference`` when given) with cell types.
        fine_tune
            ``"model"`` trains the whole model on the classification loss (a given model starts
            from a fitted head, at a rate of 3e-4; from scratch at 5e-3); ``"head"`` keeps the
            model (or, with ``model=None``, one first trained self-supervised for
            ``max_epochs``) frozen and fits the head alone.
        adapt_epochs
            With a given ``model``: epochs of self-supervised training on all cells before the
            head is fitted. ``None``: 60 with ``fine_tune="model"``, 0 with ``"head"``.
        unlabeled_category
            Label of the cells to predict in ``adata.obs[labels_key]``.
        gene_key
            Column of ``var`` with gene identifiers.
        reference_group_key
            Column of ``reference.obs`` with its samples.
        """
        if fine_tune not in ("model", "head"):
            raise ValueError(f"fine_tune={fine_tune!r} is not one of ('model', 'head').")
        if adapt_epochs is not None and adapt_epochs < 0:
            raise ValueError(f"adapt_epochs must be >= 0, got {adapt_epochs}.")
        adata = inputs.adata
        if inputs.reference is not None:
            ref_labels = get_obs_column(inputs.reference, labels_key).astype(str)
            data = self._corpus(
                inputs,
                inputs.reference,
                gene_key,
                reference_group_key,
                labels=(np.full(adata.n_obs, UNKNOWN, dtype=object), ref_labels),
            )
            rows = np.flatnonzero(data.obs[CORPUS_DATASET_KEY].to_numpy() == "query")
            model_gene_key = None
        else:
            column = adata.obs[labels_key].astype(object)
            labels = np.array(
                [
                    UNKNOWN if v is None or v == unlabeled_category else v
                    for v in column.where(column.notna(), None)
                ]
            )
            if (labels == UNKNOWN).all():
                raise ValueError(
                    f"adata.obs[{labels_key!r}] labels no cell; nothing to learn from."
                )
            data = self._input(inputs, gene_key, labels=labels)
            rows = np.arange(adata.n_obs)
            model_gene_key = gene_key
        if adapt_epochs is None:
            adapt_epochs = ADAPT_EPOCHS if fine_tune == "model" else 0
        max_epochs = inputs.max_epochs
        if max_epochs is None:
            max_epochs = MAX_EPOCHS["annotate"] if inputs.model is None else FINE_TUNE_EPOCHS
        model = self._fit(
            inputs,
            data,
            "annotate",
            gene_key=model_gene_key,
            fine_tune=True,
            head_only=fine_tune == "head",
            adapt_epochs=adapt_epochs,
            max_epochs=max_epochs,
        )
        probs = model.predict(data, soft=True).iloc[rows]
        probs.index = adata.obs_names.copy()
        params = {"fine_tune": fine_tune, "adapt_epochs": adapt_epochs, "max_epochs": max_epochs}
        return Result(probs, model, params)

    # ------------------------------------------------------------------ internals
    def _input(
        self, inputs: Inputs, gene_key: str | None, labels: np.ndarray | None = None
    ) -> AnnData:
        """A minimal AnnData of ``inputs.adata`` registered with :meth:`CellPLM.setup_anndata`."""
        spatial_key = inputs.spatial_key if inputs.has_spatial else None
        small = minimal_anndata(
            inputs.adata,
            inputs.layer,
            obs_keys=(inputs.group_key,),
            obs=None if labels is None else {LABELS: np.asarray(labels).astype(str)},
            spatial_key=spatial_key,
            var_keys=(gene_key,),
        )
        if inputs.group_key is not None:
            small.obs[inputs.group_key] = small.obs[inputs.group_key].astype(str)
        CellPLM.setup_anndata(
            small,
            layer=inputs.layer,
            group_key=inputs.group_key,
            spatial_key=spatial_key,
            labels_key=LABELS if labels is not None else None,
        )
        return small

    def _corpus(
        self,
        inputs: Inputs,
        reference: AnnData,
        gene_key: str | None,
        reference_group_key: str | None,
        labels: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> AnnData:
        """``adata`` (dataset "query") and ``reference`` joined into one registered corpus."""
        spatial_key = inputs.spatial_key if inputs.has_spatial else "spatial"
        corpus = build_corpus(
            {"query": inputs.adata, "reference": reference},
            layer={"query": inputs.layer, "reference": inputs.reference_layer},
            group_key={"query": inputs.group_key, "reference": reference_group_key},
            spatial_key=spatial_key,
            gene_key=gene_key,
        )
        if labels is not None:
            corpus.obs[LABELS] = np.concatenate(labels).astype(str)
        CellPLM.setup_anndata(
            corpus,
            group_key=CORPUS_SAMPLE_KEY,
            dataset_key=CORPUS_DATASET_KEY,
            spatial_key=spatial_key,
            labels_key=LABELS if labels is not None else None,
            unlabeled_category=UNKNOWN,
        )
        return corpus

    def _fit(
        self,
        inputs: Inputs,
        small: AnnData,
        verb: str,
        *,
        gene_key: str | None,
        fine_tune: bool,
        head_only: bool = False,
        adapt_epochs: int = 0,
        max_epochs: int | None = None,
    ) -> CellPLM:
        """A CellPLM for ``small``: the given model carried over (and trained further) or new.

        ``head_only`` (annotation) leaves the given or self-supervised model as it is and fits
        only its head on the frozen embeddings (:meth:`CellPLM.train_annotation_head`).
        """
        model = inputs.model
        seed = inputs.seed
        max_epochs = max_epochs or inputs.max_epochs or MAX_EPOCHS[verb]
        model_kwargs = dict(inputs.model_kwargs)
        train_kwargs: dict[str, Any] = {"seed": seed, **inputs.train_kwargs}
        labelled = small.obs.get(LABELS) is not None
        torch.manual_seed(seed)  # new weights (a head, covariates), so that `seed` fixes them
        if labelled and model is not None and adapt_epochs > 0:
            adapted = _carry_over(
                model, small, gene_key, {**model_kwargs, "classification_weight": 0.0}
            )
            adapted.train(max_epochs=adapt_epochs, lr=ADAPT_LR, seed=seed)
            model = adapted
        if head_only:  # self-supervised objective only; the head is fitted afterwards
            model_kwargs.setdefault("classification_weight", 0.0)
        elif labelled:
            # annotation replaces the decoder's objective by the classifier's (as the released
            # pipeline) and drops the latent KL (the released pipeline swaps the Gaussian
            # mixture for a plain projection); from scratch it takes a larger step
            model_kwargs.setdefault("reconstruction_weight", 0.0)
            # explicit, as a model carried over keeps its weights (the adapted one had no head)
            model_kwargs.setdefault("classification_weight", 1.0)
            train_kwargs.setdefault("lr", SCRATCH_LR if model is None else FINE_TUNE_LR)
            train_kwargs.setdefault("plan_kwargs", {"max_kl_weight": 0.0})
        if model is None:
            new = CellPLM(small, gene_key=gene_key, **{**SMALL_CELLPLM, **model_kwargs})
            new.train(max_epochs=max_epochs, **train_kwargs)
        else:
            new = _carry_over(model, small, gene_key, model_kwargs)
        if head_only:
            new.train_annotation_head(seed=seed)
        elif fine_tune and inputs.model is not None:
            if labelled:  # LP-FT: a fitted head does not distort the pre-trained features
                new.train_annotation_head(seed=seed)
            new.train(max_epochs=max_epochs, **train_kwargs)
        return new


def _carry_over(
    model: CellPLM | str, small: AnnData, gene_key: str | None, model_kwargs: dict[str, Any]
) -> CellPLM:
    """``model`` (a CellPLM or the prefix of an authors' checkpoint) for ``small``'s cells."""
    if isinstance(model, str):
        return CellPLM.load_pretrained(model, small, gene_key=gene_key, **model_kwargs)
    if isinstance(model, CellPLM):
        return CellPLM.from_model(
            model, small, gene_key=gene_key, drop_unknown_genes=True, **model_kwargs
        )
    raise TypeError(
        f"model must be a CellPLM, a checkpoint prefix or None, not {type(model).__name__}."
    )
