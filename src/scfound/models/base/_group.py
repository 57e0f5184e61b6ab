"""Group-wise training and inference for cell-as-token models (SpaFormer, CellPLM).

In these models the cells of one group (a field of view, a spatial tile or a tissue sample)
attend to each other, so one optimisation step is one group (or a chunk of a large group), the
validation set is made of whole held-out groups, and inference runs through the same loader and
scatters the results back to the cell order of the AnnData. :class:`GroupModelMixin` does all
of that with scvi-tools' :class:`~scvi.train.TrainingPlan` and :class:`~scvi.train.TrainRunner`;
a model supplies only its hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.train import TrainingPlan, TrainRunner

from scfound._utils import check_expression, get_matrix, layer_name
from scfound._validate import check_obs_keys
from scfound.data import CELL_INDEX_KEY, GroupDataSplitter, group_loader

from ._save import check_genes, check_model_data, restore_on_error
from ._training import adam_plan, run_training

#: ``setup_anndata`` arguments naming ``obs`` columns that inference on new data reads
OBS_SETUP_KEYS = ("group_key", "batch_key", "dataset_key")


class GroupModelMixin:
    """Training and inference by group for a :class:`~scvi.model.base.BaseModelClass`.

    Put it before :class:`~scvi.model.base.BaseModelClass` in the bases of a model whose
    module has ``inference(..., mask_input=False)`` and ``generative(...)`` and that sets
    ``self.max_cells`` (the cap on the cells of one training step).

    Hooks a model implements or overrides:

    * :meth:`_group_codes` (required): integer group code of every cell;
    * :meth:`_extras`: per-cell arrays that travel with each batch (default none);
    * :meth:`_plan_defaults`: defaults of the training plan (optimizer, KL schedule);
    * :meth:`_group_forward`: how a batch is run at inference and what ``fn`` receives;
    * :meth:`_inference_max_cells`: cells of one group encoded together at inference;
    * :attr:`_predict_requires_training` and :meth:`_has_weights`: refuse inference on a model
      without learned weights;
    * :meth:`_check_inference_values`: checks of a new AnnData's values before inference.

    A new AnnData given to inference (not the model's own) must have the model's genes, in the
    same order, and valid values in the registered layer; it is checked before anything is
    registered in it, so a refused AnnData is left as it was.

    A model usually overrides :meth:`train` with a thin wrapper that states its own defaults
    (epochs, learning rate, ...) in its signature and docstring, and calls this one.
    """

    _data_splitter_cls = GroupDataSplitter
    _training_plan_cls = TrainingPlan
    _train_runner_cls = TrainRunner
    #: inference on a model that was neither trained nor given weights raises
    _predict_requires_training: bool = True

    # ------------------------------------------------------------------ hooks
    def _group_codes(self, manager: AnnDataManager | None = None) -> np.ndarray:
        """Integer group code of every cell of ``manager``'s AnnData (default the model's)."""
        raise NotImplementedError

    def _extras(self, manager: AnnDataManager | None = None) -> dict[str, np.ndarray]:
        """Per-cell arrays returned with each batch under their own keys (default none)."""
        return {}

    def _plan_defaults(self, lr: float, weight_decay: float) -> dict:
        """Arguments of the training plan that ``plan_kwargs`` may override (:func:`adam_plan`)."""
        return adam_plan(lr, weight_decay)

    def _inference_max_cells(self) -> int | None:
        """Cells of one group encoded together at inference (default: the training cap)."""
        return self.max_cells

    def _has_weights(self) -> bool:
        """Whether the module holds learned weights (default: trained with :meth:`train`)."""
        return bool(self.is_trained_)

    def _untrained_message(self) -> str:
        """The error raised by inference on a model without learned weights."""
        return (
            f"this {type(self).__name__} is not trained: its outputs would come from random "
            "weights. Call model.train() first (or load a trained model)."
        )

    def _check_inference_values(self, adata: AnnData) -> None:
        """Raise if the registered layer of ``adata`` holds values that setup would refuse.

        The ``obs`` columns named by the setup (:data:`OBS_SETUP_KEYS`) must be present and
        complete. Models extend it with their other registered inputs (e.g. coordinates).
        """
        registry = self.adata_manager.data_registry[REGISTRY_KEYS.X_KEY]
        layer = registry.attr_key if registry.attr_name == "layers" else None
        check_expression(get_matrix(adata, layer), layer_name(layer))
        setup_args = self.adata_manager.registry["setup_args"]
        check_obs_keys(adata, **{k: setup_args.get(k) for k in OBS_SETUP_KEYS})

    def _group_forward(self, tensors: dict[str, torch.Tensor], decode: bool) -> tuple[dict, ...]:
        """Run the module on one batch without masking; the outputs are the arguments of ``fn``.

        Returns ``(inference_outputs, generative_outputs)``; the latter is empty unless
        ``decode``.
        """
        module = self.module
        inference_outputs = module.inference(
            **module._get_inference_input(tensors), mask_input=False
        )
        generative_outputs = {}
        if decode:
            generative_outputs = module.generative(
                **module._get_generative_input(tensors, inference_outputs)
            )
        return inference_outputs, generative_outputs

    # --------------------------------------------------------------- training
    def train(
        self,
        max_epochs: int = 100,
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        train_size: float = 1.0,
        validation_size: float | None = None,
        early_stopping: bool = False,
        early_stopping_patience: int = 10,
        gradient_clip_val: float = 2.0,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        strategy: str = "auto",
        seed: int = 0,
        enable_progress_bar: bool | None = None,
        datasplitter_kwargs: dict | None = None,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ) -> None:
        """Train with scvi-tools' :class:`~scvi.train.TrainingPlan`, one group per step.

        With ``train_size < 1`` whole groups are held out for validation, and the loss on
        freshly masked validation groups is logged as ``validation_loss`` (used by early
        stopping).

        Parameters
        ----------
        max_epochs
            Passes over all training groups.
        lr, weight_decay
            Optimizer settings (AdamW unless the model's defaults or ``plan_kwargs`` say
            otherwise).
        train_size, validation_size
            Fractions of **groups** for training and validation.
        early_stopping, early_stopping_patience
            Stop when ``validation_loss`` has not improved for this many epochs (needs
            ``train_size < 1``).
        gradient_clip_val
            Gradient-norm clipping.
        accelerator, devices, strategy
            Passed to Lightning. With a DDP strategy (``"ddp"`` and several devices) the steps
            of each epoch are sharded across processes, and plain ``"ddp"`` runs with
            ``find_unused_parameters=True`` (a step may leave parameters unused).
        seed
            Seed of the group split, shuffling and masking.
        enable_progress_bar
            Show the progress bar (epoch, loss, time left); default
            :attr:`scfound.settings.progress_bar` (``True``).
        datasplitter_kwargs
            Extra arguments of :class:`~scfound.data.GroupDataSplitter`.
        plan_kwargs
            Extra arguments of :class:`~scvi.train.TrainingPlan`, over the model's defaults.
        **trainer_kwargs
            Passed to :class:`~scvi.train.Trainer`.

        """
        if early_stopping and train_size >= 1:
            raise ValueError(
                "early_stopping needs validation groups: pass train_size < 1 to hold some out."
            )
        torch.manual_seed(seed)
        distributed = "ddp" in str(strategy).lower()
        splitter = self._data_splitter_cls(
            self.adata_manager,
            self._group_codes(),
            train_size=train_size,
            validation_size=validation_size,
            max_cells=self.max_cells,
            extras=self._extras(),
            seed=seed,
            distributed_sampler=distributed,
            **(datasplitter_kwargs or {}),
        )
        plan_kwargs = {**self._plan_defaults(lr, weight_decay), **(plan_kwargs or {})}
        plan = self._training_plan_cls(self.module, **plan_kwargs)
        if splitter.n_val > 0:
            trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        if distributed:
            trainer_kwargs.setdefault("use_distributed_sampler", False)
            if strategy == "ddp":
                # a step may leave parameters unused (a token type absent from the group, the
                # annotation head on unlabelled cells), which plain DDP rejects
                strategy = "ddp_find_unused_parameters_true"
        if self.history_ is None:
            # trained without a recorded history (e.g. a linear probe only): scvi-tools would
            # keep no history of this run and warn, so it is recorded as the first one
            self.is_trained_ = False
        run_training(
            self,
            plan,
            splitter,
            max_epochs=max_epochs,
            enable_progress_bar=enable_progress_bar,
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            early_stopping=early_stopping,
            early_stopping_monitor="validation_loss",
            early_stopping_patience=early_stopping_patience,
            gradient_clip_val=gradient_clip_val,
            **trainer_kwargs,
        )
        self.module.eval()

    # -------------------------------------------------------------- inference
    def _model_genes(self) -> np.ndarray:
        """The genes (``var_names``) the model was set up with, in their registered order."""
        state = self.adata_manager.get_state_registry(REGISTRY_KEYS.X_KEY)
        genes = state.get("column_names")
        return np.asarray(self.adata.var_names if genes is None else genes).astype(str)

    def _inference_adata(self, adata: AnnData | None) -> AnnData:
        """The AnnData to run inference on, checked before anything is registered in it.

        Parameters
        ----------
        adata
            ``None`` (the model's own data) or an AnnData to apply the model to.

        Returns
        -------
        ``adata``, or the model's AnnData when it is ``None``.

        Raises
        ------
        RuntimeError
            If the model has no learned weights (see :meth:`_has_weights`).
        TypeError
            If ``adata`` is not an AnnData.
        ValueError
            If a new ``adata`` has fewer than two cells or duplicated names, or does not have
            the model's genes in the model's order (the error lists the missing and the unknown
            genes), or its registered layer holds NaN, infinite, negative or float32-overflowing
            values.
        KeyError
            If a new ``adata`` lacks the registered layer.

        """
        if self._predict_requires_training and not self._has_weights():
            raise RuntimeError(self._untrained_message())
        if adata is None or adata is self.adata:
            return self.adata
        check_model_data(adata)
        check_genes(adata.var_names, self._model_genes())
        self._check_inference_values(adata)
        return adata

    @torch.inference_mode()
    def _predict(
        self,
        adata: AnnData | None,
        fn: Callable[..., torch.Tensor],
        max_cells: int | Literal["auto"] | None = "auto",
        decode: bool = True,
        checked: bool = False,
        **extras_kwargs,
    ) -> np.ndarray:
        """Apply ``fn`` to the module's outputs group by group; rows in the cell order of ``adata``.

        Parameters
        ----------
        adata
            Data registered with the model's ``setup_anndata`` (default: the model's).
        fn
            ``fn(tensors, *outputs)`` with the outputs of :meth:`_group_forward`; returns a
            ``(n_cells_of_batch, n_values)`` tensor.
        max_cells
            Cells of one group encoded together (larger groups are cut in fixed, strided
            chunks); ``"auto"``: :meth:`_inference_max_cells`; ``None``: whole groups.
        decode
            Run the generative model too (not needed for embeddings).
        checked
            ``adata`` was returned by :meth:`_inference_adata` (do not check it again).
        **extras_kwargs
            Passed to :meth:`_extras`.

        Returns
        -------
        ``float32`` array, ``(adata.n_obs, n_values)``.

        Raises
        ------
        RuntimeError, ValueError, KeyError
            See :meth:`_inference_adata`: a model without weights, or a new ``adata`` with other
            genes or bad values (refused before anything is registered in it).

        """
        if not checked:
            adata = self._inference_adata(adata)
        with restore_on_error(type(self), adata):  # a failing transfer writes nothing
            adata = self._validate_anndata(adata)
        manager = self.get_anndata_manager(adata, required=True)
        if max_cells == "auto":
            max_cells = self._inference_max_cells()
        self.module.eval()
        out = None
        loader = group_loader(
            manager,
            self._group_codes(manager),
            max_cells=max_cells,
            extras=self._extras(manager, **extras_kwargs),
        )
        for tensors in loader:
            values = fn(tensors, *self._group_forward(tensors, decode))
            values = values.detach().float().cpu().numpy()
            if out is None:
                out = np.empty((adata.n_obs, values.shape[1]), dtype=np.float32)
            out[tensors[CELL_INDEX_KEY].numpy()] = values
        return out
