"""Guidance- and sequence-parallel generation over mlx.distributed (mlx_ltx/distributed.py,
models/sequence_parallel.py): ranks launched by ``mlx.launch --backend ring`` over loopback
(tests/distributed_worker.py), against the single-process run of the same request and the
reference's transformer goldens; a rank that dies mid-run; ranks given different models.

``mlx.launch`` exits 0 even when a rank fails (it reports ``[WARN] Node with rank N exited with
code X`` on stderr), so the failure tests read the ranks' messages and the files left behind."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from reference_data import TOL_F32, TOL_LOOP, FixtureSet, FixtureSet25, fixture_dirs, rel_err
from test_e2e import make_pipeline, request

WORKER = Path(__file__).parent / "distributed_worker.py"
PIPELINES = ("distilled", "dev", "dev-two-stage")
LAUNCH = shutil.which("mlx.launch") or str(Path(sys.executable).parent / "mlx.launch")


def _set() -> FixtureSet:
    """The 2.3 set the launches use: ``tiny`` when present (each launch costs two processes), or
    the one ``MLX_LTX_REFERENCE_DIR`` names."""
    dirs = fixture_dirs()
    if not dirs:
        pytest.skip("no LTX-2.3 fixture set")
    sets = [FixtureSet(d) for d in dirs]
    chosen = next((s for s in sets if s.variant == "tiny"), sets[0])
    if "e2e" not in chosen.manifest:
        pytest.skip(f"{chosen.path.name} has no e2e request")
    return chosen


def _bytes_on_disk(folder: Path) -> int:
    """A fixture set's size: the smallest set is the cheapest to launch on several ranks."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _free_port() -> int:
    with socket.socket() as s:  # the ring listens on this port and the next
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(*args: str, timeout: int = 300, ranks: int = 2) -> subprocess.CompletedProcess:
    if not os.path.exists(LAUNCH):
        pytest.skip("mlx.launch is not installed beside this Python")
    cmd = [LAUNCH, "-n", str(ranks), "--backend", "ring", "-p", str(_free_port()), "--", sys.executable, str(WORKER), *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=Path(__file__).parent)


@pytest.mark.parametrize("mode", ["guidance", "sequence"])
def test_parallel_equals_single_process(tmp_path, mode):
    """DISTILLED, DEV and DEV_TWO_STAGE on two ranks: final latents and audio equal the single-process
    run with the same seed, within 1e-6 for guidance-parallel (every rank applies the same guidance to
    the same pass outputs) and the f32 parity tolerance for sequence-parallel (each rank's queries
    attend to the gathered keys), frames within one code value. Guidance mode shares the guided
    steps' passes and runs the one-pass steps (distilled, stage 2) sequence-parallel."""
    fs = _set()
    meta = fs.manifest["e2e"]
    r = _launch("run", str(fs.path), str(tmp_path), mode, *PIPELINES)
    assert "exited with code" not in r.stderr, r.stderr[-3000:]
    for name in PIPELINES:
        got = np.load(tmp_path / f"{name}.npz")
        tokens, passes = got["tokens"], got["passes"]
        one_pass_steps = name != "dev"  # distilled; dev-two-stage's stage 2
        assert (len(tokens) > 0) == (mode == "sequence" or one_pass_steps), "which steps split the tokens"
        assert (tokens[:, 0] < tokens[:, 1]).all()
        guided = name != "distilled"
        assert (len(passes) > 0) == (guided and mode == "guidance"), passes
        assert (passes[:, 0] < passes[:, 1]).all()
        single = make_pipeline(fs, name, meta).generate(meta["prompt"], **request(fs, name, meta))
        errors = {"video latent": rel_err(got["video_latent"], np.array(single.video_latent.astype(mx.float32))),
                  "audio latent": rel_err(got["audio_latent"], np.array(single.audio_latent.astype(mx.float32))),
                  "audio": rel_err(got["audio"], single.audio)}
        print(f"\n{fs.path.name} {name}, 2 ranks vs 1: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
        assert max(errors.values()) <= (1e-6 if mode == "guidance" else TOL_F32), errors
        assert np.abs(got["frames"].astype(int) - single.frames.astype(int)).max() <= 1


def test_sequence_parallel_transformer(tmp_path):
    """The transformer on four ranks, each with a share of the video tokens (18 tokens: shares of
    5, 5, 4, 4): the per-token-timestep forward, appended guiding tokens under a self-attention mask,
    the batched STG / modality passes and (with a 2.5 set) LTX-2.5's forward with its keyframe marks
    match the reference's goldens at the f32 tolerance, and every rank returns the same outputs."""
    fs = _set()
    sets_25 = fixture_dirs("2.5")
    fs25 = FixtureSet25(min(sets_25, key=_bytes_on_disk)) if sets_25 else None
    r = _launch("transformer", str(fs.path), str(tmp_path), *([str(fs25.path)] if fs25 else []), ranks=4)
    assert "exited with code" not in r.stderr, r.stderr[-3000:]
    ranks = [np.load(tmp_path / f"transformer.rank{i}.npz") for i in range(4)]
    g, gp = fs.golden("transformer"), fs.golden("pipeline")
    from test_transformer import _dev_passes

    got = ranks[0]
    expected = {"out.video": g["out.video"], "out.audio": g["out.audio"],
                "keyframe.video": gp["keyframe.s100_attn50.step0.video.denoised"],
                "keyframe.audio": gp["keyframe.s100_attn50.step0.audio.denoised"]}
    for i, (name, _, _) in enumerate(_dev_passes(gp)):
        expected[f"passes.{name}.video"] = gp[f"dev.step0.video.{name}"]
        expected[f"passes.{name}.audio"] = gp[f"dev.step0.audio.{name}"]
        got = dict(got, **{f"passes.{name}.video": ranks[0]["passes.video"][i:i + 1],
                           f"passes.{name}.audio": ranks[0]["passes.audio"][i:i + 1]})
    if fs25 is not None:
        g25 = fs25.golden("transformer")
        assert g25["in.video.keyframes_mask"].any()
        expected.update({"ltx25.video": g25["out.video"], "ltx25.audio": g25["out.audio"]})
    errors = {k: rel_err(got[k], v) for k, v in expected.items()}
    print(f"\n{fs.path.name}, 4 ranks vs the reference: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    assert max(errors.values()) <= TOL_F32, errors
    for other in ranks[1:]:
        for k in ("out.video", "out.audio", "keyframe.video", "passes.video", "passes.audio"):
            assert np.array_equal(other[k], ranks[0][k]), k
    for i, rank in enumerate(ranks):
        shares = rank["shares"]
        assert len(shares) and (shares[:, 0] < shares[:, 1]).all(), f"rank {i} ran the whole sequence"


def test_sequence_parallel_25_equals_single_process(tmp_path):
    """LTX-2.5 (the smallest set): DISTILLED (ancestral stage 1) and DEV sequence-parallel on two ranks
    equal the single-process run: Gemma-4 contexts from rank 0, keyframe marks cut to each rank's tokens.
    (Guidance-parallel shares whole passes, which nothing of a generation changes: checked on 2.3.)"""
    mode = "sequence"
    from distributed_worker import make_any_pipeline, open_set

    dirs = fixture_dirs("2.5")
    if not dirs:
        pytest.skip("no LTX-2.5 fixture set")
    fs = open_set(min(dirs, key=_bytes_on_disk))
    meta = fs.manifest["e2e"]
    names = ("distilled", "dev")
    r = _launch("run", str(fs.path), str(tmp_path), mode, *names)
    assert "exited with code" not in r.stderr, r.stderr[-3000:]
    for name in names:
        got = np.load(tmp_path / f"{name}.npz")
        assert len(got["tokens"]) > 0
        single = make_any_pipeline(fs, name).generate(meta["prompt"], **request(fs, name, meta))
        errors = {"video latent": rel_err(got["video_latent"], np.array(single.video_latent.astype(mx.float32))),
                  "audio latent": rel_err(got["audio_latent"], np.array(single.audio_latent.astype(mx.float32))),
                  "audio": rel_err(got["audio"], single.audio)}
        print(f"\n{fs.path.name} {name} {mode}, 2 ranks vs 1: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
        assert max(errors.values()) <= TOL_F32, errors
        assert np.abs(got["frames"].astype(int) - single.frames.astype(int)).max() <= 1


def test_video_decode_tiles_divided(tmp_path):
    """The conv video decode in its smallest tiles (8 on the tiny set), divided among two ranks: each
    decodes every other tile, and the frames equal the single-process decode with the same tiles."""
    from distributed_worker import smallest_decode_tiles

    fs = _set()
    meta = fs.manifest["e2e"]
    r = _launch("run", str(fs.path), str(tmp_path), "guidance", "distilled+tiles")
    assert "exited with code" not in r.stderr, r.stderr[-3000:]
    got = np.load(tmp_path / "distilled+tiles.npz")
    tiles = got["tiles"]
    assert len(tiles) >= 2 and tiles[:, 1].sum() == (len(tiles) + 1) // 2, tiles  # rank 0: tiles 0, 2, 4, ...
    pipe = make_pipeline(fs, "distilled", meta)
    smallest_decode_tiles(pipe)
    single = pipe.generate(meta["prompt"], **request(fs, "distilled", meta))
    assert np.array_equal(got["frames"], single.frames)


def test_diffusion_decode_tiles_divided(tmp_path):
    """LTX-2.5's diffusion video decoder with the reference's tiling, its tiles divided among two ranks:
    both ranks' frames equal the single-process tiled decode's and match the reference's tiled golden."""
    from test_e2e_25 import diffusion_vae_folder, e2e

    from mlx_ltx.models.vae_tiling import AxisTiling, TilingConfig
    from mlx_ltx.pipelines import Pipeline

    dirs = [d for d in fixture_dirs("2.5") if "diffusion_vae" in FixtureSet25(d).manifest]
    if not dirs:
        pytest.skip("no LTX-2.5 fixture set with a diffusion video VAE")
    fs = FixtureSet25(min(dirs, key=_bytes_on_disk))
    r = _launch("diffusion-decode", str(fs.path), str(tmp_path))
    assert "exited with code" not in r.stderr, r.stderr[-3000:]
    ranks = [np.load(tmp_path / f"diffusion_decode.rank{i}.npz") for i in range(2)]
    assert ranks[0]["tiles"][:, 1].sum() >= 1 and ranks[1]["tiles"][:, 1].sum() >= 1
    g, _ = e2e(fs)
    gd = fs.golden("e2e_diffvae")
    tiled = fs.manifest["diffusion_vae"]["tiled"]
    name, t = tiled["pipeline"], tiled["tiling"]
    pipe = Pipeline.from_pretrained(diffusion_vae_folder(fs, tmp_path), name, dtype=mx.float32)
    cfg = TilingConfig(*(AxisTiling(t[a]["tile_size"], t[a]["overlap"]) for a in ("frames", "height", "width")))
    x_t = mx.array(gd[f"{name}.decoder_draw"])
    single = np.concatenate(list(pipe.iter_video_frames(mx.array(g[f"{name}.decode.video.latent"]),
                                                        noise=lambda shape, dtype: x_t.astype(dtype), tiling=cfg)))
    for rank in ranks:
        assert np.array_equal(rank["frames"], single)
    err = rel_err(ranks[0]["frames"], gd[f"tiled.{name}.out.frames_u16"].astype(np.float64) / 65535.0)
    print(f"\n{fs.path.name} {name} diffusion decode, tiles on 2 ranks vs the reference: {err:.1e}")
    assert err <= TOL_LOOP


def _cli_args(fs: FixtureSet, out: Path, model: str | None = None, parallel: str = "guidance") -> list[str]:
    meta = fs.manifest["e2e"]
    return ["--model", model or str(fs.checkpoint_path), "--gemma", str(fs.path / fs.manifest["gemma_dir"]),
            "--pipeline", "dev", "--prompt", meta["prompt"], "--height", str(meta["height"]), "--width",
            str(meta["width"]), "--num-frames", str(meta["num_frames"]), "--steps", "3", "--output", str(out),
            "--dtype", "float32", "--parallel", parallel,
            "--video-stg-blocks", *map(str, meta["guiders"]["dev"]["video"]["stg_blocks"]),
            "--audio-stg-blocks", *map(str, meta["guiders"]["dev"]["audio"]["stg_blocks"])]


@pytest.mark.parametrize("parallel", ["sequence", "auto"])
def test_cli_on_two_ranks(tmp_path, parallel):
    """``python -m mlx_ltx.generate`` under ``mlx.launch``: one video written, the settings (with the
    parallel mode the plan chose: auto is guidance when it fits) and the "wrote" line printed once."""
    fs = _set()
    out = tmp_path / "clip.mp4"
    r = _launch("cli", "--", *_cli_args(fs, out, parallel=parallel))
    assert "exited with code" not in r.stderr, r.stderr[-3000:]
    expected = "sequence" if parallel == "sequence" else "guidance"
    assert r.stderr.count(f"parallel  {expected} on 2 ranks") == 1, r.stderr[-3000:]
    assert r.stdout.count("wrote ") == 1 and out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


@pytest.mark.parametrize("parallel", ["guidance", "sequence"])
def test_a_rank_that_dies_ends_the_run(tmp_path, parallel):
    """Rank 1 vanishes at the second exchange of the denoising (guidance outputs, or K/V inside a
    sequence-parallel forward): rank 0 ends with one message naming the cause, and no output (nor a
    temporary one) is left."""
    fs = _set()
    out = tmp_path / "clip.mp4"
    r = _launch("cli", "--die-at-step", "2", "--", *_cli_args(fs, out, parallel=parallel))
    assert "rank 1 exited with code 3" in r.stderr, r.stderr[-3000:]
    assert "rank 0: another rank of this run stopped or became unreachable" in r.stderr, r.stderr[-3000:]
    assert r.stderr.count("error:") == 1
    assert list(tmp_path.iterdir()) == []


def test_ranks_with_different_models_are_refused(tmp_path):
    """Rank 0 and rank 1 opened different checkpoints: both refuse before any work."""
    fs = _set()
    other = next((FixtureSet(d) for d in fixture_dirs() if d != fs.path), None)
    if other is None:
        pytest.skip("needs a second LTX-2.3 fixture set")
    out = tmp_path / "clip.mp4"
    r = _launch("cli", "--", *_cli_args(fs, out, f"{fs.checkpoint_path}|{other.checkpoint_path}"))
    assert r.stderr.count("the ranks opened different models") == 2, r.stderr[-3000:]
    assert "put the same model folder on every host" in r.stderr
    assert list(tmp_path.iterdir()) == []
