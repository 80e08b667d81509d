"""One rank of the guidance-parallel tests (tests/test_distributed.py), started by ``mlx.launch``.

    mlx.launch -n 2 --backend ring -- python tests/distributed_worker.py run SET OUT MODE PIPELINE...
    mlx.launch -n 4 --backend ring -- python tests/distributed_worker.py transformer SET OUT [SET_25]
    mlx.launch -n 2 --backend ring -- python tests/distributed_worker.py cli [--die-at-step K] -- GENERATE ARGS...

``run``: each pipeline generates the fixture set's e2e request (its seed, no injected draws) with
the work shared across the ranks in parallel MODE (guidance / sequence); rank 0 saves the latents,
frames and waveform to ``OUT/<pipeline>.npz``. ``transformer``: the transformer goldens (per-token
timesteps, appended guiding tokens under a self-attention mask, the batched STG / modality passes;
with SET_25, LTX-2.5's with its keyframe marks) run sequence-parallel; every rank saves its outputs to ``OUT/transformer.rank<R>.npz``. ``cli``: ``python -m mlx_ltx.generate`` with its arguments; a ``--model``
value ``A|B`` gives rank 0 model A and the other ranks B (the mismatch test); ``--die-at-step K``
makes rank 1 vanish (``os._exit``) at the K-th exchange of the denoising (guidance outputs or
sequence-parallel gathers).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

RANK = int(os.environ.get("MLX_RANK", "0"))


def smallest_decode_tiles(pipe) -> None:
    """The video decode planned for a 1-byte budget: its smallest tiles (several on the tiny sets)."""
    pipe.decode_budget = lambda: 1


def open_set(set_dir: str | Path):
    """The fixture set at ``set_dir`` (an LTX-2.3 or LTX-2.5 one)."""
    from reference_data import FixtureSet, FixtureSet25, fixture_dirs

    path = Path(set_dir).resolve()
    return FixtureSet25(path) if path in [d.resolve() for d in fixture_dirs("2.5")] else FixtureSet(path)


def make_any_pipeline(fs, name: str):
    """The e2e tests' pipeline for ``name`` on ``fs``, whichever generation the set is."""
    from reference_data import FixtureSet25

    if isinstance(fs, FixtureSet25):
        from test_e2e_25 import make_pipeline

        return make_pipeline(fs, name)
    from test_e2e import make_pipeline

    return make_pipeline(fs, name, fs.manifest["e2e"])


def run(set_dir: str, out_dir: str, mode: str, names: list[str]) -> int:
    import mlx.core as mx
    from test_e2e import request

    from mlx_ltx.distributed import check_same_model, init_parallel

    fs = open_set(set_dir)
    meta = fs.manifest["e2e"]
    parallel = init_parallel(mode)
    assert parallel is not None and parallel.size >= 2, "launch with mlx.launch -n 2"
    for name in names:
        log = count_exchanges()
        tiled = name.endswith("+tiles")  # "<pipeline>+tiles": decoded in its smallest tiles, divided among the ranks
        name = name.removesuffix("+tiles")
        pipe = make_any_pipeline(fs, name)
        if tiled:
            smallest_decode_tiles(pipe)
        check_same_model(parallel, pipe.checkpoint)
        pipe.parallel = parallel
        result = pipe.generate(meta["prompt"], **request(fs, name, meta))
        if parallel.rank == 0:
            np.savez(Path(out_dir) / f"{name}{'+tiles' if tiled else ''}.npz",
                     video_latent=np.array(result.video_latent.astype(mx.float32)), audio_latent=np.array(result.audio_latent.astype(mx.float32)), frames=result.frames,
                     audio=result.audio, tokens=np.array(log["tokens"]).reshape(-1, 2),
                     passes=np.array(log["passes"]).reshape(-1, 2), tiles=np.array(log["tiles"]).reshape(-1, 2))
        else:
            assert result.frames is None and result.path is None  # only rank 0 decodes and writes
            assert pipe._text_encoder is None  # nor does it load the text encoder: rank 0's contexts
    return 0


def count_exchanges() -> dict[str, list]:
    """Record every exchange from now on: "tokens", (this rank's tokens, all tokens) of each sequence-
    parallel gather; "passes", (passes run here, all passes) of each guidance-parallel share."""
    from mlx_ltx import distributed
    from mlx_ltx.models import sequence_parallel

    log = {"tokens": [], "passes": []}
    log["tiles"] = []
    gather, share = sequence_parallel.SequenceShards.gather, distributed.share_pass_outputs
    exchange = distributed.TileSharing.exchange

    def counted_exchange(self, index, tile, shape):
        log["tiles"].append((index, tile is not None))
        return exchange(self, index, tile, shape)

    distributed.TileSharing.exchange = counted_exchange

    def counted_gather(self, x, axis):
        log["tokens"].append((x.shape[axis], sum(self.counts)))
        return gather(self, x, axis)

    def counted_share(parallel, names, outputs):
        log["passes"].append((len(outputs), len(names)))
        return share(parallel, names, outputs)

    sequence_parallel.SequenceShards.gather = counted_gather
    distributed.share_pass_outputs = counted_share
    return log


def transformer(set_dir: str, out_dir: str, set_25: str | None = None) -> int:
    import mlx.core as mx
    from reference_data import FixtureSet
    from test_transformer import _dev_passes, _keyframe_call, _tile, golden, model_for, modality

    from mlx_ltx.distributed import init_parallel

    fs = FixtureSet(Path(set_dir))
    sp = init_parallel("sequence").sequence
    shares = count_exchanges()["tokens"]
    model = model_for(fs, mx.float32)
    out = {}
    g = golden(fs, "transformer")
    v = modality(g["in.video.latent"], g["in.sigma"], g["in.video.timesteps"], g["in.video.positions"],
                 g["in.video.context"], mx.float32)
    a = modality(g["in.audio.latent"], g["in.sigma"], g["in.audio.timesteps"], g["in.audio.positions"],
                 g["in.audio.context"], mx.float32)
    out["out.video"], out["out.audio"] = model(v, a, None, sp)
    gp = golden(fs, "pipeline")
    out["keyframe.video"], out["keyframe.audio"] = _keyframe_call(
        gp, "s100_attn50", 0, mx.float32, SimpleNamespace(denoise=lambda v, a: model.denoise(v, a, None, sp)))
    passes = _dev_passes(gp)
    n, sigma = len(passes), gp["dev.sigmas"][0:1]
    vl, al = gp["dev.in.video.noise"], gp["dev.in.audio.noise"]
    ctx = {s: np.concatenate([gp[f"in.{s}.context_negative" if neg else f"in.{s}.context"] for _, neg, _ in passes])
           for s in ("video", "audio")}
    v = modality(_tile(vl, n), np.repeat(sigma, n), np.full((n, vl.shape[1]), sigma[0], np.float32),
                 _tile(gp["video.positions"], n), ctx["video"], mx.float32)
    a = modality(_tile(al, n), np.repeat(sigma, n), np.full((n, al.shape[1]), sigma[0], np.float32),
                 _tile(gp["audio.positions"], n), ctx["audio"], mx.float32)
    out["passes.video"], out["passes.audio"] = model.denoise(v, a, [p for _, _, p in passes], sp)
    if set_25 is not None:  # LTX-2.5: the keyframe marks are cut to each rank's share too
        from mlx_ltx.models.transformer import Modality, load_transformer

        g = FixtureSet(Path(set_25)).golden("transformer")
        model = load_transformer(set_25, mx.float32)
        v = Modality(mx.array(g["in.video.latent"]), mx.array(g["in.sigma"]), mx.array(g["in.video.timesteps"]),
                     mx.array(g["in.video.positions"]), mx.array(g["in.video.context"]),
                     keyframes_mask=mx.array(g["in.video.keyframes_mask"]))
        a = Modality(mx.array(g["in.audio.latent"]), mx.array(g["in.sigma"]), mx.array(g["in.audio.timesteps"]),
                     mx.array(g["in.audio.positions"]), mx.array(g["in.audio.context"]))
        out["ltx25.video"], out["ltx25.audio"] = model(v, a, None, sp)
    np.savez(Path(out_dir) / f"transformer.rank{RANK}.npz", shares=np.array(shares),
             **{k: np.array(x) for k, x in out.items()})
    return 0


def diffusion_decode(set_dir: str, out_dir: str) -> int:
    """LTX-2.5's diffusion video decoder over the ranks: the set's tiled e2e golden latent decoded with the
    reference's tiling and injected draw, the tiles divided among the ranks; every rank saves its frames."""
    import mlx.core as mx
    from reference_data import FixtureSet25
    from test_e2e_25 import diffusion_vae_folder, e2e

    from mlx_ltx.distributed import TileSharing, init_parallel
    from mlx_ltx.models.vae_tiling import AxisTiling, TilingConfig
    from mlx_ltx.pipelines import Pipeline

    fs = FixtureSet25(Path(set_dir).resolve())
    g, _ = e2e(fs)
    gd = fs.golden("e2e_diffvae")
    tiled = fs.manifest["diffusion_vae"]["tiled"]
    name, t = tiled["pipeline"], tiled["tiling"]
    parallel = init_parallel("guidance")
    log = count_exchanges()
    folder = Path(out_dir) / f"rank{RANK}"
    folder.mkdir()
    pipe = Pipeline.from_pretrained(diffusion_vae_folder(fs, folder), name, dtype=mx.float32)
    pipe.parallel = parallel
    x_t = mx.array(gd[f"{name}.decoder_draw"])
    cfg = TilingConfig(*(AxisTiling(t[a]["tile_size"], t[a]["overlap"]) for a in ("frames", "height", "width")))
    latent = mx.array(g[f"{name}.decode.video.latent"])
    frames = np.concatenate(list(pipe.iter_video_frames(latent, noise=lambda shape, dtype: x_t.astype(dtype),
                                                        tiling=cfg, sharing=TileSharing(parallel))))
    np.savez(Path(out_dir) / f"diffusion_decode.rank{RANK}.npz", frames=frames, tiles=np.array(log["tiles"]))
    return 0


def cli(argv: list[str]) -> int:
    from mlx_ltx import distributed
    from mlx_ltx.generate import main

    die_at = None
    if argv[:1] == ["--die-at-step"]:
        die_at, argv = int(argv[1]), argv[2:]
    argv = argv[1:] if argv[:1] == ["--"] else argv
    i = argv.index("--model") + 1
    if "|" in argv[i]:
        a, b = argv[i].split("|")
        argv[i] = a if RANK == 0 else b
    if die_at is not None:
        from mlx_ltx.models import sequence_parallel

        calls = [0]

        def dying(real):
            def exchange(*args, **kwargs):
                calls[0] += 1
                if RANK == 1 and calls[0] == die_at:
                    os._exit(3)  # a rank that vanishes mid-run (killed, crashed, unplugged)
                return real(*args, **kwargs)
            return exchange

        distributed.share_pass_outputs = dying(distributed.share_pass_outputs)
        sequence_parallel.SequenceShards.gather = dying(sequence_parallel.SequenceShards.gather)
    return main(argv)


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "run":
        sys.exit(run(rest[0], rest[1], rest[2], rest[3:]))
    modes = {"transformer": transformer, "diffusion-decode": diffusion_decode}
    sys.exit(modes[mode](*rest) if mode in modes else cli(rest))
