"""Every public entry point that takes an AnnData refuses other objects with one clear message."""

import numpy as np
import pandas as pd
import pytest
from mudata import MuData

import scfound as sf

WRONG = {
    "DataFrame": pd.DataFrame(np.ones((4, 3))),
    "ndarray": np.ones((4, 3)),
    "list": [[1, 2], [3, 4]],
}

ENTRIES = {
    "pp.spatial_tiles": lambda a: sf.pp.spatial_tiles(a, n_tiles=2),
    "pp.spatial_graph": lambda a: sf.pp.spatial_graph(a),
    "pp.mask_entries": lambda a: sf.pp.mask_entries(a, 0.3),
    "pp.build_corpus": lambda a: sf.pp.build_corpus({"x": a}),
    "pl.imputed_genes": lambda a: sf.pl.imputed_genes(a, ["g"]),
    "SpaFormer.setup_anndata": lambda a: sf.SpaFormer.setup_anndata(a),
    "CellPLM.setup_anndata": lambda a: sf.CellPLM.setup_anndata(a),
    "STAI.setup_anndata": lambda a: sf.STAI.setup_anndata(a),
    "tl.impute": lambda a: sf.tl.impute(a, "spaformer"),
    "tl.embed": lambda a: sf.tl.embed(a, "cellplm"),
    "tl.denoise": lambda a: sf.tl.denoise(a),
    "tl.annotate": lambda a: sf.tl.annotate(a, "cell_type"),
}


@pytest.mark.parametrize("kind", sorted(WRONG))
@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_wrong_types_name_what_was_expected_and_found(entry, kind):
    with pytest.raises(TypeError, match=rf"expected an AnnData.* got {type(WRONG[kind]).__name__}"):
        ENTRIES[entry](WRONG[kind])


def test_a_mudata_where_an_anndata_belongs_points_to_its_modalities(synthetic):
    mdata = MuData({"rna": synthetic})
    with pytest.raises(TypeError, match=r"got MuData\. Pass one of its modalities"):
        sf.pp.spatial_tiles(mdata, n_tiles=2)


@pytest.mark.parametrize(
    "entry",
    [
        lambda a: sf.SpaFormer.setup_anndata(a, layer="counts"),
        lambda a: sf.CellPLM.setup_anndata(a, layer="counts"),
        lambda a: sf.STAI.setup_anndata(a, layer="counts"),
        lambda a: sf.tl.embed(a, layer="counts"),
    ],
)
def test_empty_and_duplicated_data_are_refused_before_anything_is_written(entry, synthetic):
    empty = synthetic[:0].copy()
    with pytest.raises(ValueError, match=r"has 0 cells x 20 genes"):
        entry(empty)
    dup = synthetic.copy()
    dup.var_names = ["g"] * dup.n_vars
    before = (list(dup.obs.columns), set(dup.uns), set(dup.obsm))
    with pytest.raises(ValueError, match=r"var_names` has duplicates.*var_names_make_unique"):
        entry(dup)
    assert (list(dup.obs.columns), set(dup.uns), set(dup.obsm)) == before


def test_cellplm_coordinates_are_checked(synthetic):
    adata = synthetic.copy()
    adata.obsm["spatial"] = adata.obsm["spatial"].astype(float)
    adata.obsm["spatial"][0] = np.nan
    with pytest.raises(ValueError, match=r"NaN coordinates for some cells of group"):
        sf.CellPLM.setup_anndata(adata, layer="counts", group_key="fov", spatial_key="spatial")
    adata.obsm["spatial"] = np.ones((adata.n_obs, 4))
    with pytest.raises(ValueError, match=r"must have shape \(n_obs, 2\) .* for CellPLM"):
        sf.CellPLM.setup_anndata(adata, layer="counts", spatial_key="spatial")
    with pytest.raises(ValueError, match=r"must have shape \(n_obs, 2\)"):
        sf.pp.build_corpus({"a": adata}, layer="counts")
    with pytest.raises(KeyError, match=r"adata.obsm\['xy'\] not found"):
        sf.CellPLM.setup_anndata(adata, layer="counts", spatial_key="xy")
    assert not [c for c in adata.obs.columns if c.startswith("_scvi")]


def test_coordinates_that_are_not_numbers_and_single_cells(synthetic):
    strings = synthetic.copy()
    strings.obsm["spatial"] = np.array([["a", "b"]] * strings.n_obs)
    with pytest.raises(ValueError, match=r"must hold numbers \(x, y\)"):
        sf.tl.impute(strings, layer="counts")
    with pytest.raises(ValueError, match=r"has 1 cells x 20 genes; at least 2 cell"):
        sf.tl.impute(synthetic[:1].copy(), layer="counts")
