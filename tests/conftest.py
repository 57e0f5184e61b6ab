import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.fixture
def synthetic():
    """Small spatial dataset: 240 cells, 20 genes, 4 cell types, 2 fields of view."""
    import scfound as sf

    return sf.datasets.synthetic_spatial(240, 20, 4, seed=0, n_fovs=2)


# ------------------------------------------------------------- unchanged-object checks
def _dense(X):
    """A dense ``numpy`` copy of a dense or sparse matrix (or a DataFrame's values)."""
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    if sp.issparse(X):
        return X.toarray()
    if isinstance(X, pd.DataFrame):
        return X.to_numpy().copy()
    return np.array(X, copy=True)


def fingerprint(adata) -> dict:
    """Everything a refused call must leave as it was: obs, var, obsm, layers, uns keys and X.

    A MuData is fingerprinted through its own ``obs`` and ``uns`` keys and each modality.
    """
    mods = getattr(adata, "mod", None)
    if mods is not None:
        return {
            "obs": adata.obs.copy(),
            "uns": sorted(adata.uns.keys()),
            "mod": {name: fingerprint(mod) for name, mod in mods.items()},
        }
    return {
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "obsm": {k: _dense(v) for k, v in adata.obsm.items()},
        "layers": {k: _dense(v) for k, v in adata.layers.items()},
        "X": None if adata.X is None else _dense(adata.X),
        "uns": sorted(adata.uns.keys()),
    }


def assert_unchanged(adata, before: dict) -> None:
    """Fail unless ``adata`` still matches its :func:`fingerprint` ``before``."""
    import numpy as np
    import pandas as pd

    after = fingerprint(adata)
    pd.testing.assert_frame_equal(after["obs"], before["obs"])
    assert after["uns"] == before["uns"]
    if "mod" in before:
        assert after["mod"].keys() == before["mod"].keys()
        for name, mod_before in before["mod"].items():
            assert_unchanged(adata.mod[name], mod_before)
        return
    pd.testing.assert_frame_equal(after["var"], before["var"])
    for slot in ("obsm", "layers"):
        assert after[slot].keys() == before[slot].keys(), slot
        for key, values in before[slot].items():
            assert after[slot][key].dtype == values.dtype, (slot, key)
            np.testing.assert_array_equal(after[slot][key], values)
    if before["X"] is None:
        assert after["X"] is None
    else:
        assert after["X"].dtype == before["X"].dtype
        np.testing.assert_array_equal(after["X"], before["X"])
