"""Data loading for cell-as-token models: group-wise batching, group splits, inference loaders."""

from ._group_loader import (
    CELL_INDEX_KEY,
    GroupBatchSampler,
    GroupDataset,
    GroupDataSplitter,
    group_chunks,
    group_loader,
    split_groups,
)

__all__ = [
    "CELL_INDEX_KEY",
    "GroupBatchSampler",
    "GroupDataSplitter",
    "GroupDataset",
    "group_chunks",
    "group_loader",
    "split_groups",
]
