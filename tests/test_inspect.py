"""python -m mlx_ltx.inspect: header summary and strict verification of the ported components."""

from mlx_ltx.inspect import main


def test_inspect_verifies_fixture(fixture_set, capsys):
    ups = [str(fixture_set.upsampler_path(n)) for n in fixture_set.manifest["upsamplers"]]
    assert main([str(fixture_set.checkpoint_path), "--verify", "--upsampler", *ups]) == 0
    out = capsys.readouterr().out
    assert "text_projection    loads strictly" in out
    assert f"{fixture_set.checkpoint.config.transformer.num_layers} blocks" in out


def test_inspect_reports_bad_file(tmp_path, capsys):
    assert main([str(tmp_path / "missing.safetensors")]) == 1
    assert "not found" in capsys.readouterr().err
