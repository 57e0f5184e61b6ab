"""Names and numbers shared by scfound's models, data loaders and preprocessing.

One definition each, imported from here. Where results are *written* (``layers``, ``obsm``,
``obs``, ``uns`` keys of the outputs) is :mod:`scfound._keys`; this module holds the names of the
inputs and of the models' internal registries.
"""

from __future__ import annotations

# ------------------------------------------------------------------------ model registries
# Fields of an scvi-tools ``AnnDataManager`` registry, hence keys of the tensors of a batch
# (next to ``scvi.REGISTRY_KEYS``). They never appear in the user's AnnData.

#: registry field of the ``(n_obs, 2)`` or ``(n_obs, 3)`` coordinates
SPATIAL_KEY = "spatial"
#: registry field of the group codes: the cells processed together (field of view, tile,
#: tissue sample or slice), set up from the ``obs`` column named by ``group_key``
GROUP_KEY = "group"
#: registry field of the dataset codes (datasets with different gene panels in one corpus)
DATASET_KEY = "dataset"
#: batch key of each cell's position in the registered AnnData (group-wise loaders)
CELL_INDEX_KEY = "cell_index"

# ------------------------------------------------------------------ keys of the user's data
#: ``adata.obsm`` key of the coordinates (squidpy's)
DEFAULT_SPATIAL_KEY = "spatial"
#: ``obs`` column of a corpus (:func:`scfound.pp.build_corpus`) with each cell's dataset
CORPUS_DATASET_KEY = "dataset"
#: ``obs`` column of a corpus with each cell's group, ``"<dataset>:<group>"``; pass it to
#: ``CellPLM.setup_anndata`` as ``group_key``
CORPUS_SAMPLE_KEY = "sample"
#: ``varm`` key of a corpus's genes x datasets table of the genes each dataset measured
MEASURED_KEY = "measured"

# ------------------------------------------------------------------------------- numbers
#: library size of "log1p CP10k" normalisation (scanpy's ``normalize_total(target_sum=1e4)``)
TARGET_SUM = 1e4
