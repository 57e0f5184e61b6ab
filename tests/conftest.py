import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.fixture
def synthetic():
    """Small spatial dataset: 240 cells, 20 genes, 4 cell types, 2 fields of view."""
    import scfound as sf

    return sf.datasets.synthetic_spatial(240, 20, 4, seed=0, n_fovs=2)
