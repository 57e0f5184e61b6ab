import numpy as np
import pytest

import scfound as sf
from scfound.data import (
    CELL_INDEX_KEY,
    GroupBatchSampler,
    GroupDataSplitter,
    group_chunks,
    split_groups,
)


def test_group_chunks_cover_every_cell_once():
    codes = np.repeat([0, 1, 2], [10, 250, 40])
    chunks = group_chunks(codes, max_cells=100, rng=np.random.default_rng(0))
    allpos = np.concatenate(chunks)
    assert np.array_equal(np.sort(allpos), np.arange(300))
    assert max(len(c) for c in chunks) <= 100
    for c in chunks:
        assert len(np.unique(codes[c])) == 1
    fixed1, fixed2 = group_chunks(codes, 100, None), group_chunks(codes, 100, None)
    assert all(np.array_equal(a, b) for a, b in zip(fixed1, fixed2, strict=True))


def test_split_groups_keeps_groups_whole():
    codes = np.repeat(np.arange(10), 7)
    train, val, test = split_groups(codes, 0.7, 0.2, seed=1)
    assert len(train) + len(val) + len(test) == 70
    for a, b in [(train, val), (train, test), (val, test)]:
        assert not set(codes[a]) & set(codes[b])
    assert len(set(codes[val])) == 2
    with pytest.raises(ValueError, match="train_size"):
        split_groups(codes, 1.5)


def test_sampler_shards_across_ranks():
    codes = np.repeat(np.arange(5), 3)
    seen = []
    for rank in range(2):
        s = GroupBatchSampler(codes, shuffle=True, seed=3)
        s.rank, s.world_size = rank, 2
        s.set_epoch(4)
        seen.extend(tuple(c) for c in s)
        assert len(s) == 3
    assert {tuple(c) for c in group_chunks(codes, None, None)} <= set(seen)


def test_splitter_yields_one_group_per_step(synthetic):
    sf.SpaFormer.setup_anndata(synthetic, layer="counts", group_key="fov")
    model = sf.SpaFormer(synthetic, n_hidden=16, n_heads=2)
    codes = model._group_codes()
    splitter = GroupDataSplitter(model.adata_manager, codes, train_size=0.5, max_cells=60)
    assert splitter.n_train + splitter.n_val == synthetic.n_obs
    batches = list(splitter.train_dataloader())
    for batch in batches:
        cells = batch[CELL_INDEX_KEY].numpy()
        assert len(np.unique(codes[cells])) == 1
        assert len(cells) <= 60
        assert batch["X"].shape == (len(cells), synthetic.n_vars)
    seen = np.concatenate([b[CELL_INDEX_KEY].numpy() for b in batches])
    assert np.array_equal(np.sort(seen), np.sort(splitter.train_idx))
