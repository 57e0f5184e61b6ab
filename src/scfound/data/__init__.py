"""Data loading: group-wise batching for cell-as-token models, paired batching for two datasets."""

from ._group_loader import (
    CELL_INDEX_KEY,
    GroupBatchSampler,
    GroupDataset,
    GroupDataSplitter,
    group_chunks,
    group_loader,
    split_groups,
)
from ._paired_loader import (
    PairedDataModule,
    PairedStepSampler,
    block_edges,
    spatial_blocks,
)

__all__ = [
    "CELL_INDEX_KEY",
    "GroupBatchSampler",
    "GroupDataSplitter",
    "GroupDataset",
    "PairedDataModule",
    "PairedStepSampler",
    "block_edges",
    "group_chunks",
    "group_loader",
    "spatial_blocks",
    "split_groups",
]
