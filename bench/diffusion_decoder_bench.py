"""LTX-2.5's diffusion video decoder: neighborhood-attention speed and the decoder's peak memory.

    python bench/diffusion_decoder_bench.py            # both rows (~10 min on 2 CPU cores)
    python bench/diffusion_decoder_bench.py --only na  # the attention row alone (~1 min)

Row 1 (na3d vs SDPA). ``na3d`` (models/neighborhood_attention.py) against the FLOP floor a perfect
NA kernel would approach: ``mx.fast.scaled_dot_product_attention`` over the same tokens cut into
independent groups of Kt·Kh·Kw keys (block-diagonal attention: the same number of scores per query,
no gather, no mask). The ratio is what the halo boxes (more keys scored than the window needs), the
gathers and the masks cost.

Row 2 (peak memory per tile). The decoder with the release's kernels, depths and head counts at a
quarter of its widths (stage channels 256..32, head_dim 16; the full widths take minutes per decode
on this CPU), random weights: ``mx.get_peak_memory()`` during a decode (activations only: the
weights are resident before the reset) against ``diffusion_tiling.estimate_decode_bytes`` for the
same latent and tile. A ratio below 1 means the planner's estimate errs on the safe side.

Prints a Markdown table and writes ``bench/results/diffusion_decoder-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from mlx_ltx.models.diffusion_tiling import estimate_decode_bytes
from mlx_ltx.models.diffusion_video_decoder import DiffusionDecoderConfig, DiffusionVideoDecoder
from mlx_ltx.models.neighborhood_attention import na3d, na_block_bytes
from mlx_ltx.models.vae_tiling import AxisTiling, TilingConfig

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# (T, H, W) token grids and kernels of the decoder: stage 5 (3,7,7) and stages 3-4 (3,5,5)
NA_CASES = [((9, 48, 64), (3, 7, 7)), ((9, 32, 48), (3, 5, 5))]
# latents (T, H, W) and pixel tiles (frames, H, W; None: untiled) of the memory row
MEMORY_CASES = [((3, 7, 7), None), ((4, 8, 10), None), ((4, 8, 10), (25, 256, 224))]


def timed(fn, reps: int) -> float:
    mx.eval(fn())
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        mx.eval(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def na_row(dims, kernel, heads=2, head_dim=64, dtype=mx.bfloat16, reps=2) -> dict:
    shape = (1, *dims, heads, head_dim)
    q, k, v = (mx.random.normal(shape).astype(dtype) for _ in range(3))
    n, nk = dims[0] * dims[1] * dims[2], kernel[0] * kernel[1] * kernel[2]
    chunks = n // nk

    def flat(x):  # the same tokens as independent groups of nk keys: (chunks, heads, nk, D)
        x = x.reshape(n, heads, head_dim)[: chunks * nk]
        return x.reshape(chunks, nk, heads, head_dim).transpose(0, 2, 1, 3)

    t_na = timed(lambda: na3d(q, k, v, kernel, scale=1.0), reps)
    t_sdpa = timed(lambda: mx.fast.scaled_dot_product_attention(flat(q), flat(k), flat(v), scale=1.0), reps)
    return {"dims": dims, "kernel": kernel, "tokens": n, "dtype": str(dtype), "na3d_s": t_na, "sdpa_s": t_sdpa,
            "ratio": t_na / t_sdpa}


def reduced_config() -> DiffusionDecoderConfig:
    return DiffusionDecoderConfig(in_channels=128, head_dim=16, stage_channels=(256, 128, 64, 64, 32), t_emb_dim=96)


def random_decoder(cfg: DiffusionDecoderConfig, dtype) -> DiffusionVideoDecoder:
    dec = DiffusionVideoDecoder(cfg)
    dec.update(tree_unflatten([(k, (mx.random.normal(v.shape) * 0.02).astype(dtype))
                               for k, v in tree_flatten(dec.parameters())]))
    dec.dtype = dtype
    mx.eval(dec.parameters())
    return dec


def memory_row(dec: DiffusionVideoDecoder, thw, tile, dtype) -> dict:
    latent = mx.random.normal((1, dec.config.in_channels, *thw)).astype(dtype)
    tiling = None if tile is None else TilingConfig(
        *(AxisTiling(t, 8 if a == 0 else 96) if t < n else AxisTiling()
          for a, (t, n) in enumerate(zip(tile, ((thw[0] - 1) * 8 + 1, thw[1] * 32, thw[2] * 32)))))
    mx.eval(latent)
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    t0 = time.perf_counter()
    mx.eval(dec.decode_raw(latent, None, tiling))
    seconds = time.perf_counter() - t0
    peak = mx.get_peak_memory() - base
    est = estimate_decode_bytes(dec.config, thw, tile, mx.zeros((), dtype).itemsize, na_block_bytes(dtype))
    return {"latent": thw, "tile": tile, "dtype": str(dtype), "peak_bytes": peak, "estimate_bytes": est,
            "ratio": peak / est, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=("na", "memory"), default=None)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    out = {"device": str(mx.default_device()), "mlx": mx.__version__}
    lines = []
    if args.only in (None, "na"):
        out["na"] = [na_row(d, k, reps=args.reps) for d, k in NA_CASES]
        lines += ["| na3d grid | kernel | tokens | na3d | block-diagonal SDPA | ratio |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['dims']} | {r['kernel']} | {r['tokens']} | {r['na3d_s'] * 1e3:.0f} ms | "
                  f"{r['sdpa_s'] * 1e3:.0f} ms | {r['ratio']:.1f}x |" for r in out["na"]]
    if args.only in (None, "memory"):
        cfg, rows = reduced_config(), []
        for dtype in (mx.float32, mx.bfloat16):
            dec = random_decoder(cfg, dtype)
            rows += [memory_row(dec, thw, tile, dtype) for thw, tile in MEMORY_CASES]
        out["memory"] = rows
        lines += ["", "| latent | tile (frames, H, W) | dtype | peak | estimate | peak ÷ estimate | time |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['latent']} | {r['tile'] or 'untiled'} | {r['dtype']} | {r['peak_bytes'] / 2**20:.0f} MB | "
                  f"{r['estimate_bytes'] / 2**20:.0f} MB | {r['ratio']:.2f} | {r['seconds']:.0f} s |" for r in rows]
    print("\n".join(lines))
    os.makedirs(RESULTS, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(RESULTS, f"diffusion_decoder-{stamp}.json"), "w") as f:
        json.dump(out, f, indent=1, default=str)


if __name__ == "__main__":
    main()
