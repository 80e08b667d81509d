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


def test_inspect_quantized_folder(fixture_set, tmp_path, capsys):
    """A q8/q4 folder: its quantization is reported and the parameters are counted as before
    quantization (a packed uint32 holds 32/bits of them), so every count matches the source."""
    import math

    from mlx_ltx import convert as conv
    from mlx_ltx import inspect
    from mlx_ltx.loading import Checkpoint

    src = fixture_set.checkpoint
    n_quant = sum(conv.should_quantize(k, v, 64) for k, v in src.shapes.items())
    assert main([str(fixture_set.checkpoint_path)]) == 0
    source_lines = capsys.readouterr().out.splitlines()
    assert "quantization: none" in source_lines
    assert inspect.logical_params(src) == sum(math.prod(v) for v in src.shapes.values())
    for q, bits in (("q8", 8), ("q4", 4)):
        out = conv.convert(str(fixture_set.checkpoint_path), "dev", str(tmp_path / q), quantize=q, hash_sources=False,
                           progress=lambda m: None)
        assert main([out, "--verify"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert f"quantization: {n_quant} layers, {bits} bits, group size 64, affine" in lines
        assert inspect.logical_params(Checkpoint(out)) == inspect.logical_params(src)
        # the per-component lines: same tensors and parameters as the source; dtypes plus the quantized layers
        for a, b in zip([s for s in source_lines if s.startswith("  ")], [s for s in lines if s.startswith("  ")]):
            if b.startswith("  transformer "):
                assert b == a + f", {n_quant} layers {bits}-bit"
            else:
                assert b == a
        assert "  transformer        loads strictly" in lines
