"""What every model's ``train`` shares: the progress-bar default and a quiet Lightning."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from scfound._settings import settings

#: Lightning lines printed on every training call that tell a user nothing to act on: the device
#: banner and the CUDA device list (the device in use is the one asked for), the advertisement
#: for the ``litlogger`` package, and the end of a run that reached ``max_epochs`` (the progress
#: bar already shows it).
LIGHTNING_NOISE = re.compile(
    r"(GPU available: |TPU available: |HPU available: |💡 Tip: "
    r"|LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES: "
    r"|`Trainer\.fit` stopped: `max_epochs=\d+` reached\.)"
)
#: loggers of those lines: Lightning's ``rank_zero_info`` (``lightning_utilities`` logs through
#: one of the first two) and its CUDA accelerator
LIGHTNING_INFO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda",
)
#: a deprecation raised by torch >= 2.10 inside Lightning's data-loader plumbing, on every fit
TORCH_LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
#: Lightning's warning about a step whose tensors differ in length (a two-dataset batch)
AMBIGUOUS_BATCH_SIZE = r"Trying to infer the `batch_size` from an ambiguous collection"


class _DropLightningNoise(logging.Filter):
    """Drop the records of :data:`LIGHTNING_NOISE`; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return LIGHTNING_NOISE.match(record.getMessage()) is None


@contextmanager
def quiet_lightning(*warning_messages: str) -> Iterator[None]:
    """Silence Lightning's routine start-up and shut-down lines within the block.

    Only the messages in :data:`LIGHTNING_NOISE` (logged by Lightning), the torch deprecation
    :data:`TORCH_LEAFSPEC_WARNING` (triggered inside Lightning) and the warnings that start with
    one of ``warning_messages`` (regular expressions) are dropped, and only while the block
    runs: other Lightning messages (e.g. "GPU available but not used", DDP start-up, early
    stopping) and every warning of the user's own code still show.

    Parameters
    ----------
    *warning_messages
        Further warnings to ignore, as for :func:`warnings.filterwarnings` (``message=``).

    """
    noise = _DropLightningNoise()
    loggers = [logging.getLogger(name) for name in LIGHTNING_INFO_LOGGERS]
    for logger in loggers:
        logger.addFilter(noise)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=TORCH_LEAFSPEC_WARNING, category=FutureWarning
            )
            for message in warning_messages:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(noise)


def adam_plan(lr: float, weight_decay: float, optimizer: str = "AdamW") -> dict:
    """Optimizer arguments of scvi-tools' ``TrainingPlan`` shared by every model.

    Adam(W) with PyTorch's ``eps=1e-8``: the ``TrainingPlan`` default, ``eps=0.01``, all but
    freezes parameters with small gradients (token tables, attention layers).
    """
    return {"optimizer": optimizer, "lr": lr, "weight_decay": weight_decay, "eps": 1e-8}


def progress_bar_default(enable_progress_bar: bool | None) -> bool:
    """``enable_progress_bar`` of a ``train`` call, or :attr:`scfound.settings.progress_bar`."""
    return settings.progress_bar if enable_progress_bar is None else bool(enable_progress_bar)


#: trainer arguments that save Lightning checkpoints: scvi-tools reads them back (the best model
#: at the end, or on resume) with pickle, which runs any code a tampered file holds
CHECKPOINT_OPTIONS = ("enable_checkpointing", "checkpointing_monitor", "load_best_on_end")


def check_no_checkpointing(trainer_kwargs: dict[str, Any]) -> None:
    """Refuse the trainer arguments that write and unpickle Lightning checkpoints.

    Parameters
    ----------
    trainer_kwargs
        The trainer arguments of a ``train`` call.

    Raises
    ------
    ValueError
        For ``enable_checkpointing=True``, ``load_best_on_end=True``, ``checkpointing_monitor``,
        or a checkpoint callback in ``callbacks``; the message names the argument and what to
        do instead.
    """
    from lightning.pytorch.callbacks import Checkpoint

    used = [k for k in CHECKPOINT_OPTIONS if trainer_kwargs.get(k) not in (None, False)]
    callbacks = trainer_kwargs.get("callbacks") or []
    if not isinstance(callbacks, list | tuple):
        callbacks = [callbacks]
    used += [f"callbacks=[{type(c).__name__}(...)]" for c in callbacks if isinstance(c, Checkpoint)]
    if used:
        raise ValueError(
            f"{', '.join(used)}: Lightning checkpoints are not supported by scfound models, as "
            "they are read back with pickle, which can run code from a tampered file. Train "
            "with early_stopping=True to stop at the best epoch, and save the model with "
            "model.save(dir) (weights and JSON, no pickle)."
        )


def run_training(
    model: Any,
    plan: Any,
    data: Any,
    *,
    max_epochs: int,
    enable_progress_bar: bool | None,
    ignore_warnings: tuple[str, ...] = (),
    **trainer_kwargs: Any,
) -> None:
    """Train ``model`` with its scvi-tools ``TrainRunner``: the one Lightning run of every model.

    The module is put in training mode, the progress bar follows
    :func:`progress_bar_default`, metrics are logged at every step, and Lightning's routine
    lines (and ``ignore_warnings``) are silenced (:func:`quiet_lightning`).

    Parameters
    ----------
    model
        An scvi-tools model with ``module`` and ``_train_runner_cls``.
    plan
        Its training plan.
    data
        The data splitter (a Lightning data module).
    max_epochs
        Passes over the training data.
    enable_progress_bar
        As ``train(enable_progress_bar=)``; ``None`` reads :attr:`scfound.settings.progress_bar`.
    ignore_warnings
        Warnings (regular expressions) to drop during the run.
    **trainer_kwargs
        Passed to the runner and to :class:`~scvi.train.Trainer` (``accelerator``, ``devices``,
        ``strategy``, early stopping, ...); the checkpoint options
        (:data:`CHECKPOINT_OPTIONS`, checkpoint callbacks) are refused, see
        :func:`check_no_checkpointing`.
    """
    check_no_checkpointing(trainer_kwargs)
    trainer_kwargs.setdefault("log_every_n_steps", 1)
    model.module.train()  # inference leaves the module in eval mode; Lightning keeps it
    with quiet_lightning(*ignore_warnings):
        runner = model._train_runner_cls(
            model,
            training_plan=plan,
            data_splitter=data,
            max_epochs=max_epochs,
            enable_progress_bar=progress_bar_default(enable_progress_bar),
            **trainer_kwargs,
        )
        runner()
