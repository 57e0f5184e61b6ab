"""Group-wise batching for cell-as-token models: one training step is one group (FOV, tile, sample).

A *group* is a set of cells that attend to each other, such as a field of view of a spatial section
or one tissue sample. Groups larger than ``max_cells`` are cut into random, near-equal chunks that
are redrawn every epoch, so that every cell is seen once per epoch and memory per step is bounded.
Inference runs through the same loader with a fixed chunking, and results are scattered back to
the original cell order by the ``cell_index`` entry that every batch carries.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import lightning.pytorch as pl
import numpy as np
import torch
from scvi.data import AnnDataManager
from torch.utils.data import DataLoader, Dataset, Sampler

from scfound._constants import CELL_INDEX_KEY


def group_chunks(
    codes: np.ndarray, max_cells: int | None, rng: np.random.Generator | None
) -> list[np.ndarray]:
    """Split positions ``0..len(codes)-1`` by group code, cutting groups above ``max_cells``.

    Parameters
    ----------
    codes
        Integer group code per position.
    max_cells
        Largest chunk; ``None`` keeps whole groups.
    rng
        Random generator for the chunking of large groups; ``None`` cuts them in a fixed,
        strided way (used for inference, so results do not depend on a seed).

    Returns
    -------
    List of sorted position arrays, one per step.

    """
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    chunks = []
    for group in np.split(order, bounds):
        if max_cells is None or len(group) <= max_cells:
            chunks.append(np.sort(group))
            continue
        n_chunks = int(np.ceil(len(group) / max_cells))
        perm = rng.permutation(group) if rng is not None else group
        chunks.extend(np.sort(perm[i::n_chunks]) for i in range(n_chunks))
    return chunks


class GroupBatchSampler(Sampler[np.ndarray]):
    """Yield the positions of one group (or chunk of a large group) per step.

    Parameters
    ----------
    codes
        Integer group code of each position of the dataset.
    max_cells
        Cap on cells per step; larger groups are split in random chunks each epoch.
    shuffle
        Visit groups in random order, and redraw the chunks of large groups, every epoch.
    seed
        Seed of the epoch-wise randomness.
    distributed
        Shard the steps of each epoch across the ranks of ``torch.distributed`` (DDP): every rank
        sees the same number of steps.

    """

    def __init__(
        self,
        codes: np.ndarray,
        max_cells: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
        distributed: bool = False,
    ):
        self.codes = np.asarray(codes)
        self.max_cells = max_cells
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.rank, self.world_size = 0, 1
        if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
            self.rank = torch.distributed.get_rank()
            self.world_size = torch.distributed.get_world_size()
        self._n_steps = len(group_chunks(self.codes, max_cells, np.random.default_rng(seed)))

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used to seed shuffling (called by Lightning under DDP)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return int(np.ceil(self._n_steps / self.world_size))

    def __iter__(self) -> Iterator[np.ndarray]:
        rng = np.random.default_rng((self.seed, self.epoch)) if self.shuffle else None
        chunks = group_chunks(self.codes, self.max_cells, rng)
        order = rng.permutation(len(chunks)) if rng is not None else np.arange(len(chunks))
        if self.world_size > 1:
            order = np.resize(order, len(self) * self.world_size)[self.rank :: self.world_size]
        if self.shuffle:
            self.epoch += 1
        for i in order:
            yield chunks[i]


class GroupDataset(Dataset):
    """Registered AnnData fields plus per-cell arrays, indexed by positions within ``indices``.

    Parameters
    ----------
    adata_manager
        The model's :class:`~scvi.data.AnnDataManager`.
    indices
        Cells (rows of the AnnData) in this dataset.
    extras
        Per-cell arrays over all cells of the AnnData (e.g. precomputed graph features), returned
        alongside the registered fields under their own keys.

    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        indices: np.ndarray,
        extras: Mapping[str, np.ndarray] | None = None,
    ):
        self.data = adata_manager.create_torch_dataset()
        self.indices = np.asarray(indices)
        self.extras = dict(extras or {})

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, positions: np.ndarray) -> dict[str, torch.Tensor]:
        cells = self.indices[positions]
        batch = {k: torch.from_numpy(np.asarray(v)) for k, v in self.data[cells].items()}
        for key, values in self.extras.items():
            batch[key] = torch.from_numpy(np.ascontiguousarray(values[cells]))
        batch[CELL_INDEX_KEY] = torch.from_numpy(cells.astype(np.int64))
        return batch


def group_loader(
    adata_manager: AnnDataManager,
    group_codes: np.ndarray,
    indices: np.ndarray | None = None,
    *,
    max_cells: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    extras: Mapping[str, np.ndarray] | None = None,
    distributed: bool = False,
    **loader_kwargs,
) -> DataLoader:
    """A :class:`~torch.utils.data.DataLoader` that yields one group (chunk) of cells per step.

    Parameters
    ----------
    adata_manager
        The model's :class:`~scvi.data.AnnDataManager`.
    group_codes
        Integer group code of every cell of the AnnData.
    indices
        Cells to load (default all).
    max_cells, shuffle, seed, distributed
        See :class:`GroupBatchSampler`.
    extras
        Per-cell arrays to return with each batch (see :class:`GroupDataset`).
    **loader_kwargs
        Passed to :class:`~torch.utils.data.DataLoader` (``num_workers``, ``pin_memory``, ...).

    """
    if indices is None:
        indices = np.arange(adata_manager.adata.n_obs)
    dataset = GroupDataset(adata_manager, indices, extras)
    sampler = GroupBatchSampler(group_codes[indices], max_cells, shuffle, seed, distributed)
    return DataLoader(dataset, sampler=sampler, batch_size=None, **loader_kwargs)


def split_groups(
    group_codes: np.ndarray,
    train_size: float = 0.9,
    validation_size: float | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split cells into train/validation/test sets by whole groups.

    Groups are assigned in random order to the training set until it holds ``train_size`` of the
    groups (rounded, at least one), then to validation, then test. With one group, everything is
    training.

    Returns
    -------
    Cell indices ``(train, validation, test)``.

    """
    if not 0 < train_size <= 1:
        raise ValueError(f"train_size must be in (0, 1], got {train_size}.")
    validation_size = 1 - train_size if validation_size is None else validation_size
    if validation_size < 0 or train_size + validation_size > 1 + 1e-9:
        raise ValueError("train_size + validation_size must not exceed 1.")
    groups = np.random.default_rng(seed).permutation(np.unique(group_codes))
    n_groups = len(groups)
    n_train = min(max(round(train_size * n_groups), 1), n_groups)
    n_val = min(round(validation_size * n_groups), n_groups - n_train)
    if validation_size > 0 and n_val == 0 and n_groups - n_train > 0:
        n_val = 1
    parts = np.split(groups, [n_train, n_train + n_val])
    return tuple(np.flatnonzero(np.isin(group_codes, p)) for p in parts)


class GroupDataSplitter(pl.LightningDataModule):
    """Lightning data module that splits by group and batches one group per step.

    Drop-in for :class:`scvi.dataloaders.DataSplitter` in :class:`scvi.train.TrainRunner`: exposes
    ``n_train``, ``n_val`` (cells) and ``train_idx``, ``val_idx``, ``test_idx``.

    Parameters
    ----------
    adata_manager
        The model's :class:`~scvi.data.AnnDataManager`.
    group_codes
        Integer group code of every cell.
    train_size, validation_size
        Fractions of **groups** for training and validation (see :func:`split_groups`).
    max_cells
        Cap on cells per step (see :class:`GroupBatchSampler`).
    extras
        Per-cell arrays to return with each batch.
    seed
        Seed of the split and of the shuffling.
    **kwargs
        Standard :class:`~scvi.dataloaders.DataSplitter` arguments that do not apply to group
        batching (``batch_size``, ``shuffle_set_split``, ``load_sparse_tensor``) are accepted and
        ignored; ``distributed_sampler`` shards steps across DDP ranks; the rest go to the
        :class:`~torch.utils.data.DataLoader`.

    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        group_codes: np.ndarray,
        train_size: float | None = 0.9,
        validation_size: float | None = None,
        max_cells: int | None = None,
        extras: Mapping[str, np.ndarray] | None = None,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__()
        self.adata_manager = adata_manager
        self.group_codes = np.asarray(group_codes)
        self.max_cells = max_cells
        self.extras = extras
        self.seed = seed
        self.distributed = bool(kwargs.pop("distributed_sampler", False))
        for ignored in ("batch_size", "shuffle_set_split", "load_sparse_tensor", "pin_memory"):
            kwargs.pop(ignored, None)
        self.loader_kwargs = kwargs
        self.train_idx, self.val_idx, self.test_idx = split_groups(
            self.group_codes, 0.9 if train_size is None else train_size, validation_size, seed
        )
        self.n_train, self.n_val = len(self.train_idx), len(self.val_idx)

    def _loader(self, indices: np.ndarray, shuffle: bool) -> DataLoader | None:
        if len(indices) == 0:
            return None
        return group_loader(
            self.adata_manager,
            self.group_codes,
            indices,
            max_cells=self.max_cells,
            shuffle=shuffle,
            seed=self.seed,
            extras=self.extras,
            distributed=self.distributed,
            **self.loader_kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled groups of the training set."""
        return self._loader(self.train_idx, shuffle=True)

    def val_dataloader(self) -> DataLoader | None:
        """Groups of the validation set, in a fixed order."""
        return self._loader(self.val_idx, shuffle=False)

    def test_dataloader(self) -> DataLoader | None:
        """Groups of the test set, in a fixed order."""
        return self._loader(self.test_idx, shuffle=False)
