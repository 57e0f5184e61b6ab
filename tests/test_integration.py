"""Real-data integration: SpaFormer on the bundled osmFISH section, the paper's protocol."""

import numpy as np
import pytest

import scfound as sf


@pytest.mark.slow
def test_osmfish_imputation_beats_simple_references():
    adata = sf.datasets.osmfish()
    sf.pp.mask_entries(adata, fraction=0.3, layer="counts", seed=0)
    sf.tl.impute(adata, layer="heldout_counts", max_epochs=40)
    truth, mask = adata.layers["counts"], np.asarray(adata.layers["heldout"], dtype=bool)
    observed = adata.layers["heldout_counts"]
    observed = observed.toarray() if hasattr(observed, "toarray") else np.asarray(observed)
    model = sf.metrics.imputation_scores(truth, adata.layers["spaformer_imputed"], mask)
    gene_mean = np.broadcast_to(observed.mean(0), observed.shape)
    reference = sf.metrics.imputation_scores(truth, gene_mean, mask)
    assert model["pearson"] > reference["pearson"] + 0.05
    assert model["rmse"] < reference["rmse"]
    # the caller's counts are untouched and the run is recorded
    assert "spatial_tile" not in adata.obs
    assert adata.uns["scfound"]["impute"]["spaformer_imputed"]["layer"] == "heldout_counts"
