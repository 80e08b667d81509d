"""Guidance-parallel generation (mlx_ltx/distributed.py): work per rank and bytes exchanged per step.

    python bench/distributed_bench.py               # the analytic rows and a measured run on loopback (~1 min)

Analytic rows: the real LTX-2.3 22B shapes (48 blocks, video width 4096, 128 latent channels,
audio latent 128 channels) at 704×480×97 (one stage at full size: 13×15×22 = 4290 video tokens, the
audio tokens of 97 frames at 24 fps), a guided step of the 2.3 defaults (4 passes: cond, negative,
STG, modality). Per rank: the passes it runs ÷ all passes. Exchanged: each rank's ``all_sum`` input
(all passes' x0 outputs, stacked, float32), which the ring sends once per rank for 2 ranks.

Measured row: ``mlx.launch -n 2 --backend ring`` over loopback running the dev pipeline on the tiny
fixture set (float32) with the exchange instrumented: the passes each rank ran, the bytes it handed
to ``all_sum`` per guided step.

The step-time prediction for two M3 Ultra (stated assumptions, nothing measured on Apple hardware):
a pass costs 2 × 22e9 × tokens FLOPs of GEMMs plus attention (4 × blocks × tokens² × width); the GPU
sustains ASSUMED_TFLOPS bf16 TFLOP/s; Thunderbolt 5 carries ASSUMED_LINK_GBPS GB/s between the Macs.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARAMS = 22e9
BLOCKS, WIDTH, LATENT_C, AUDIO_C = 48, 4096, 128, 128
ASSUMED_TFLOPS = 18.0  # M3 Ultra (80-core GPU) sustained bf16 GEMM rate, an assumption
ASSUMED_LINK_GBPS = 5.0  # Thunderbolt 5 (80 Gb/s) effective for the ring, an assumption
PASSES = 4


def analytic(frames=97, height=480, width=704, fps=24.0, ranks=2) -> dict:
    from types import SimpleNamespace

    from mlx_ltx.models.audio_vae import AudioLatentShape

    tokens_v = ((frames - 1) // 8 + 1) * (height // 32) * (width // 32)
    # the released audio VAE: 16 kHz, hop 160, 8 latent channels x 16 mel bins = 128 per token
    audio_cfg = SimpleNamespace(sampling_rate=16000, mel_hop_length=160, latent_mel_bins=16, z_channels=8)
    tokens_a = AudioLatentShape.from_video_pixel_shape(frames, fps, audio_cfg).frames
    per_rank = math.ceil(PASSES / ranks)
    bytes_step = PASSES * (tokens_v * LATENT_C + tokens_a * AUDIO_C) * 4
    tokens = tokens_v + tokens_a
    flops = 2 * PARAMS * tokens + 4 * BLOCKS * tokens ** 2 * WIDTH
    pass_s = flops / (ASSUMED_TFLOPS * 1e12)
    link_s = bytes_step / (ASSUMED_LINK_GBPS * 1e9)
    return {"video_tokens": tokens_v, "audio_tokens": tokens_a, "work_per_rank": per_rank / PASSES,
            "bytes_per_step": bytes_step, "pass_seconds": pass_s, "step_1_mac": PASSES * pass_s,
            "step_2_macs": per_rank * pass_s + link_s, "link_seconds": link_s}


def worker(out: str) -> None:
    """One rank of the measured run (started by mlx.launch)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from reference_data import FixtureSet, fixture_dirs
    from test_e2e import make_pipeline, request

    from mlx_ltx import distributed

    fs = next(FixtureSet(d) for d in fixture_dirs() if FixtureSet(d).variant == "tiny")
    meta = fs.manifest["e2e"]
    parallel = distributed.init_parallel()
    log = {"passes": [], "bytes": []}
    real = distributed.share_pass_outputs

    def share(group, names, outputs):
        log["passes"].append([len(outputs), len(names)])
        log["bytes"].append(sum(len(names) * v.nbytes for v in next(iter(outputs.values())) if v is not None))
        return real(group, names, outputs)

    distributed.share_pass_outputs = share
    pipe = make_pipeline(fs, "dev", meta)
    pipe.parallel = parallel
    pipe.generate(meta["prompt"], **request(fs, "dev", meta))
    with open(f"{out}.rank{parallel.rank}.json", "w") as f:
        json.dump(log, f)


def measured() -> dict:
    out = "/tmp/mlx_ltx_distributed_bench"
    launch = Path(sys.executable).parent / "mlx.launch"
    subprocess.run([str(launch), "-n", "2", "--backend", "ring", "--", sys.executable, __file__, "--worker", out],
                   check=True, cwd=ROOT, capture_output=True)
    ranks = [json.load(open(f"{out}.rank{r}.json")) for r in (0, 1)]
    for r in (0, 1):
        os.remove(f"{out}.rank{r}.json")
    steps = len(ranks[0]["passes"])
    mine = [sum(p[0] for p in log["passes"]) for log in ranks]
    total = sum(p[1] for p in ranks[0]["passes"])
    return {"guided_steps": steps, "work_per_rank": [m / total for m in mine],
            "bytes_per_step": ranks[0]["bytes"][0] if steps else 0}


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2])
        return
    a, m = analytic(), measured()
    print("| mode | where | work per rank ÷ total | bytes exchanged per guided step (per rank) |")
    print("|---|---|---|---|")
    print(f"| guidance, 2 ranks | 22B at 704×480×97 (analytic; {a['video_tokens']} video + {a['audio_tokens']} audio "
          f"tokens) | {a['work_per_rank']:.2f} | {a['bytes_per_step'] / 2**20:.1f} MiB |")
    print(f"| guidance, 2 ranks | tiny set, dev, loopback (measured over {m['guided_steps']} guided steps) | "
          f"{', '.join(f'{w:.2f}' for w in m['work_per_rank'])} | {m['bytes_per_step'] / 2**10:.1f} KiB |")
    print(f"\nPredicted guided step at 704×480×97, 22B bf16: {a['pass_seconds']:.1f} s per pass at "
          f"{ASSUMED_TFLOPS:g} TFLOP/s; one M3 Ultra {a['step_1_mac']:.1f} s, two over Thunderbolt 5 "
          f"{a['step_2_macs']:.1f} s (of which {a['link_seconds'] * 1e3:.1f} ms exchange at {ASSUMED_LINK_GBPS:g} GB/s).")


if __name__ == "__main__":
    main()
