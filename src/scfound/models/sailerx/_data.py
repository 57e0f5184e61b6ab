"""Data loading of SAILERX: scvi-tools' minibatches plus per-cell arrays held by the model.

The RNA reference embedding, the paired-cell mask and the alignment weights are computed by the
model and never written into the user's MuData; :class:`CellDataLoader` adds them, row by row,
to the tensors scvi-tools reads from the registered data.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scvi.data import AnnDataManager
from scvi.dataloaders import DataSplitter
from scvi.dataloaders._samplers import BatchDistributedSampler
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler


class _WithCellData(Dataset):
    """A registered-data dataset whose items also hold rows of ``cell_data``."""

    def __init__(self, base: Dataset, indices: np.ndarray, cell_data: Mapping[str, np.ndarray]):
        self.base, self.indices, self.cell_data = base, indices, cell_data

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, positions) -> dict[str, np.ndarray]:
        positions = np.atleast_1d(np.asarray(positions))
        out = self.base[positions.tolist()]
        rows = self.indices[positions]
        for key, values in self.cell_data.items():
            out[key] = values[rows]
        return out


class CellDataLoader(DataLoader):
    """Minibatches of the registered data plus the rows of per-cell arrays.

    Parameters
    ----------
    adata_manager
        The model's manager.
    indices
        Cells (positions in the registered data) to iterate over; default all.
    cell_data
        Arrays with one row per registered cell, added to every minibatch under their keys.
    batch_size, shuffle, drop_last
        As :class:`~scvi.dataloaders.AnnDataLoader`.
    distributed_sampler
        Split the cells across processes (Lightning DDP).
    load_sparse_tensor
        As :class:`~scvi.dataloaders.AnnDataLoader` (only ``False`` is supported).
    **kwargs
        Passed to :class:`torch.utils.data.DataLoader` (``num_workers``, ``pin_memory``).
    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        indices: np.ndarray | None = None,
        *,
        cell_data: Mapping[str, np.ndarray] | None = None,
        batch_size: int = 128,
        shuffle: bool = False,
        drop_last: bool = False,
        distributed_sampler: bool = False,
        load_sparse_tensor: bool = False,
        **kwargs,
    ):
        if load_sparse_tensor:
            raise ValueError("SAILERX's loader reads dense minibatches (load_sparse_tensor=False).")
        n_obs = adata_manager.adata.shape[0]
        indices = np.arange(n_obs) if indices is None else np.asarray(indices)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        self.indices = indices
        base = adata_manager.create_torch_dataset(indices=indices)
        dataset = _WithCellData(base, indices, dict(cell_data or {}))
        if distributed_sampler:
            sampler = BatchDistributedSampler(
                dataset, batch_size=batch_size, drop_last=drop_last, shuffle=shuffle
            )
        else:
            order = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
            sampler = BatchSampler(order, batch_size=batch_size, drop_last=drop_last)
        kwargs.pop("iter_ndarray", None)
        super().__init__(dataset, sampler=sampler, batch_size=None, **kwargs)


class CellDataSplitter(DataSplitter):
    """scvi-tools' :class:`~scvi.dataloaders.DataSplitter` with :class:`CellDataLoader` loaders.

    Pass ``cell_data=`` (with the other loader arguments); it reaches every loader.
    """

    data_loader_cls = CellDataLoader
