from scfound._demo import main


def test_demo_writes_h5ad_and_png(tmp_path, capsys):
    main(["--max-epochs", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "SpaFormer" in out and "held-out scores" in out
    assert (tmp_path / "osmfish_spaformer.h5ad").stat().st_size > 0
    assert (tmp_path / "osmfish_spaformer.png").stat().st_size > 0
