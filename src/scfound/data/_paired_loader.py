"""Paired batching of a spatial and a reference dataset: a spatial block plus reference cells.

A training step of a two-dataset model such as stAI sees a spatially contiguous *block* of
spatial cells, with the neighbour graph restricted to the block, and a random draw of reference
cells. Blocks cut each sample (slice) by recursive median bisection, so they hold at most
``max_cells`` cells, never mix samples and keep most neighbours of a cell in its block. Memory
per step is then bounded whatever the size of either dataset. The neighbour graph itself is
:func:`scfound.nn.knn_adjacency`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lightning.pytorch as pl
import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

Step = tuple[np.ndarray, np.ndarray]


def block_edges(adjacency: sp.csr_matrix, cells: np.ndarray) -> torch.Tensor:
    """``(2, n_edges)`` edges of the subgraph on ``cells`` (local indices), plus self-loops."""
    sub = adjacency[cells][:, cells].tocoo()
    loops = np.arange(len(cells))
    src = np.concatenate([sub.row, loops])
    dst = np.concatenate([sub.col, loops])
    return torch.from_numpy(np.stack([src, dst]).astype(np.int64))


def spatial_blocks(coords: np.ndarray, samples: np.ndarray, max_cells: int) -> list[np.ndarray]:
    """Cut each sample into contiguous blocks of at most ``max_cells`` cells.

    Each block is split at the median of its wider coordinate until it is small enough, so
    blocks are compact and of nearly equal size.
    """
    if max_cells < 2:
        raise ValueError(f"max_cells must be at least 2, got {max_cells}.")
    blocks = []
    stack = [np.flatnonzero(samples == code) for code in np.unique(samples)]
    while stack:
        cells = stack.pop()
        if len(cells) <= max_cells:
            blocks.append(np.sort(cells))
            continue
        xy = coords[cells]
        axis = int(np.argmax(xy.max(0) - xy.min(0)))
        order = cells[np.argsort(xy[:, axis], kind="stable")]
        half = len(order) // 2
        stack += [order[:half], order[half:]]
    return blocks


class PairedStepSampler(Sampler[Step]):
    """Yield ``(spatial block, reference cells)`` per step; one epoch visits every block once.

    Parameters
    ----------
    blocks
        Spatial cell indices of each block.
    n_reference
        Number of reference cells.
    reference_batch_size
        Reference cells per step, drawn without replacement (all of them when fewer).
    shuffle
        Visit the blocks in random order every epoch.
    seed
        Seed of the block order and the reference draws.

    """

    def __init__(
        self,
        blocks: list[np.ndarray],
        n_reference: int,
        reference_batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
    ):
        self.blocks, self.n_reference = blocks, n_reference
        self.reference_batch_size = min(reference_batch_size, n_reference)
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def __len__(self) -> int:
        return len(self.blocks)

    def __iter__(self) -> Iterator[Step]:
        rng = np.random.default_rng((self.seed, self.epoch))
        self.epoch += 1
        order = rng.permutation(len(self.blocks)) if self.shuffle else range(len(self.blocks))
        for i in order:
            ref = rng.choice(self.n_reference, self.reference_batch_size, replace=False)
            yield self.blocks[i], np.sort(ref)


class PairedDataset(Dataset):
    """A step ``(spatial cells, reference cells)`` as a dict of tensors, via ``make_batch``."""

    def __init__(self, make_batch: Callable[[np.ndarray, np.ndarray], dict[str, torch.Tensor]]):
        self.make_batch = make_batch

    def __getitem__(self, step: Step) -> dict[str, torch.Tensor]:
        return self.make_batch(*step)


class PairedDataModule(pl.LightningDataModule):
    """Lightning data module for :class:`scvi.train.TrainRunner`: paired steps, no validation.

    Exposes ``n_train``, ``n_val``, ``train_idx``, ``val_idx`` and ``test_idx`` (spatial cells),
    as scvi-tools' data splitters do.
    """

    def __init__(
        self,
        make_batch: Callable[[np.ndarray, np.ndarray], dict[str, torch.Tensor]],
        blocks: list[np.ndarray],
        n_reference: int,
        reference_batch_size: int,
        seed: int = 0,
        **loader_kwargs,
    ):
        super().__init__()
        self.dataset = PairedDataset(make_batch)
        self.sampler = PairedStepSampler(blocks, n_reference, reference_batch_size, seed=seed)
        self.train_idx = np.sort(np.concatenate(blocks))
        self.val_idx = self.test_idx = np.array([], dtype=np.int64)
        self.n_train, self.n_val = len(self.train_idx), 0
        self.loader_kwargs = loader_kwargs

    def train_dataloader(self) -> DataLoader:
        """Shuffled spatial blocks, each with fresh reference cells."""
        return DataLoader(self.dataset, sampler=self.sampler, batch_size=None, **self.loader_kwargs)

    def val_dataloader(self) -> None:
        """No validation: stAI keeps the last epoch's model."""
        return None
