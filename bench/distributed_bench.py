"""Guidance- and sequence-parallel generation (mlx_ltx/distributed.py, models/sequence_parallel.py):
work per rank and bytes exchanged per step, analytic on the 22B shapes and measured on loopback.

    python bench/distributed_bench.py               # the analytic rows and measured runs on loopback (~2 min)

Analytic rows: the real LTX-2.3 22B shapes (48 blocks, video width 4096, A/V attention width 2048,
128 latent channels, audio latent 128 channels) at 704×480×97 (one stage at full size: 13×15×22 =
4290 video tokens, the audio tokens of 97 frames at 24 fps), a guided step of the 2.3 defaults
(4 passes: cond, negative, STG, modality), bf16.

* guidance: per rank, the passes it runs ÷ all passes; exchanged, each rank's ``all_sum`` input (all
  passes' x0 outputs, stacked, float32), which the ring sends once per rank for 2 ranks.
* sequence: per rank, the FLOPs of its share (its video tokens' GEMMs and their attention over the
  whole sequence, the audio stream whole) ÷ the single process's; exchanged, what each rank sends
  in the ``all_gather`` calls: per pass and block the video self-attention K/V and the V2A K/V
  (the other ranks' share of them: (N−1)/N of the gathered tensor, bf16), and per pass the
  velocities (bf16).

Measured rows: ``mlx.launch -n 2 --backend ring`` over loopback running the dev pipeline on the tiny
fixture set (float32) with the exchanges instrumented (passes per rank and bytes per guided step;
tokens per rank and bytes per step), and each rank's measured peak in the denoising stage beside a
single process's on a larger request (the tiny model at 320×512×49, dev, 2 steps), next to the
preflight's predicted activation ratio.

The step-time prediction for two M3 Ultra (stated assumptions, nothing measured on Apple hardware):
a pass costs 2 × 22e9 × tokens FLOPs of GEMMs plus attention (4 × blocks × tokens² × width); the GPU
sustains ASSUMED_TFLOPS bf16 TFLOP/s; Thunderbolt 5 carries ASSUMED_LINK_GBPS GB/s between the Macs;
exchanges are not overlapped with compute (the pessimistic case).
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
BLOCKS, WIDTH, AV_WIDTH, LATENT_C, AUDIO_C = 48, 4096, 2048, 128, 128
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
    tokens = tokens_v + tokens_a
    flops = 2 * PARAMS * tokens + 4 * BLOCKS * tokens ** 2 * WIDTH
    pass_s = flops / (ASSUMED_TFLOPS * 1e12)
    # guidance: whole passes per rank, the x0 outputs summed once per step
    per_rank = math.ceil(PASSES / ranks)
    g_bytes = PASSES * (tokens_v * LATENT_C + tokens_a * AUDIO_C) * 4
    # sequence: this rank's video tokens (largest share), the audio whole; attention of its queries over all keys
    share = math.ceil(tokens_v / ranks)
    s_flops = 2 * PARAMS * (share + tokens_a) + 4 * BLOCKS * (share + tokens_a) * tokens * WIDTH
    gathered = BLOCKS * 2 * tokens_v * (WIDTH + AV_WIDTH) * 2 + tokens_v * LATENT_C * 2  # K/V per block, velocities
    s_bytes = PASSES * gathered * (ranks - 1) / ranks
    link = ASSUMED_LINK_GBPS * 1e9
    return {"video_tokens": tokens_v, "audio_tokens": tokens_a, "pass_seconds": pass_s,
            "step_1_mac": PASSES * pass_s,
            "guidance": {"work_per_rank": per_rank / PASSES, "bytes_per_step": g_bytes,
                         "step_2_macs": per_rank * pass_s + g_bytes / link, "link_seconds": g_bytes / link},
            "sequence": {"work_per_rank": s_flops / flops, "bytes_per_step": s_bytes,
                         "step_2_macs": PASSES * s_flops / (ASSUMED_TFLOPS * 1e12) + s_bytes / link,
                         "link_seconds": s_bytes / link}}


PEAK_REQUEST = {"height": 320, "width": 512, "num_frames": 49, "num_inference_steps": 2}


def worker(out: str, mode: str, what: str) -> None:
    """One rank of a measured run (started by mlx.launch), or the single process (mode "none").
    ``what``: "exchange" (the fixture's dev request, exchanges counted) or "peak" (PEAK_REQUEST)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from reference_data import FixtureSet, fixture_dirs
    from test_e2e import make_pipeline, request

    from mlx_ltx import distributed
    from mlx_ltx.models import sequence_parallel

    fs = next(FixtureSet(d) for d in fixture_dirs() if FixtureSet(d).variant == "tiny")
    meta = fs.manifest["e2e"]
    parallel = None if mode == "none" else distributed.init_parallel(mode)
    log = {"passes": [], "bytes": [], "tokens": [], "gathered": 0, "steps": 0}
    share_outputs, gather = distributed.share_pass_outputs, sequence_parallel.SequenceShards.gather

    def share(group, names, outputs):
        log["passes"].append([len(outputs), len(names)])
        log["bytes"].append(sum(len(names) * v.nbytes for v in next(iter(outputs.values())) if v is not None))
        return share_outputs(group, names, outputs)

    def counted_gather(self, x, axis):
        n = len(self.counts)
        log["tokens"].append([x.shape[axis], sum(self.counts)])
        log["gathered"] += x.nbytes * max(self.counts) // x.shape[axis] * (n - 1)  # what this rank sends
        return gather(self, x, axis)

    distributed.share_pass_outputs = share
    sequence_parallel.SequenceShards.gather = counted_gather
    pipe = make_pipeline(fs, "dev", meta)
    pipe.parallel = parallel
    kw = request(fs, "dev", meta)
    if what == "peak":
        kw.update(PEAK_REQUEST, images=[])
    result = pipe.generate(meta["prompt"], progress=lambda *a: log.__setitem__("steps", log["steps"] + 1), **kw)
    log["stage1_peak"] = result.phase_peaks.get("stage1")
    rank = 0 if parallel is None else parallel.rank
    with open(f"{out}.{mode}.rank{rank}.json", "w") as f:
        json.dump(log, f)


def _run(mode: str, what: str) -> list[dict]:
    out = "/tmp/mlx_ltx_distributed_bench"
    cmd = [sys.executable, __file__, "--worker", out, mode, what]
    if mode != "none":
        cmd = [str(Path(sys.executable).parent / "mlx.launch"), "-n", "2", "--backend", "ring", "--", *cmd]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    ranks = []
    for r in range(1 if mode == "none" else 2):
        with open(f"{out}.{mode}.rank{r}.json") as f:
            ranks.append(json.load(f))
        os.remove(f"{out}.{mode}.rank{r}.json")
    return ranks


def measured() -> dict:
    g, s = _run("guidance", "exchange"), _run("sequence", "exchange")
    steps = len(g[0]["passes"])
    mine = [sum(p[0] for p in log["passes"]) for log in g]
    total = sum(p[1] for p in g[0]["passes"])
    single, seq = _run("none", "peak")[0], _run("sequence", "peak")
    return {"guidance": {"guided_steps": steps, "work_per_rank": [m / total for m in mine],
                         "bytes_per_step": g[0]["bytes"][0] if steps else 0},
            "sequence": {"steps": s[0]["steps"], "work_per_rank": [log["tokens"][0][0] / log["tokens"][0][1]
                                                                  for log in s],
                         "bytes_per_step": s[0]["gathered"] / max(s[0]["steps"], 1)},
            "peak": {"single": single["stage1_peak"], "ranks": [log["stage1_peak"] for log in seq]}}


def predicted_activation_ratio() -> float:
    """The preflight's stage-1 activations of one rank of two (sequence) ÷ one process's, at PEAK_REQUEST."""
    sys.path.insert(0, str(ROOT / "tests"))
    import mlx.core as mx
    from reference_data import FixtureSet, fixture_dirs

    from mlx_ltx.preflight import predict_peak

    fs = next(FixtureSet(d) for d in fixture_dirs() if FixtureSet(d).variant == "tiny")
    r = PEAK_REQUEST
    act = [predict_peak(fs.checkpoint_path, "dev", r["height"], r["width"], r["num_frames"], dtype=mx.float32,
                        ranks=n, parallel="sequence").phases["stage1"].activations for n in (1, 2)]
    return act[1] / act[0]


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        worker(*sys.argv[2:5])
        return
    a, m = analytic(), measured()
    where = f"22B at 704×480×97 (analytic; {a['video_tokens']} video + {a['audio_tokens']} audio tokens, bf16)"
    print("| mode | where | work per rank ÷ total | bytes each rank sends per step |")
    print("|---|---|---|---|")
    for mode in ("guidance", "sequence"):
        print(f"| {mode}, 2 ranks | {where} | {a[mode]['work_per_rank']:.2f} | "
              f"{a[mode]['bytes_per_step'] / 2**20:,.1f} MiB |")
    mg, ms = m["guidance"], m["sequence"]
    print(f"| guidance, 2 ranks | tiny set, dev, loopback (measured over {mg['guided_steps']} guided steps) | "
          f"{', '.join(f'{w:.2f}' for w in mg['work_per_rank'])} | {mg['bytes_per_step'] / 2**10:.1f} KiB |")
    print(f"| sequence, 2 ranks | tiny set, dev, loopback (measured over {ms['steps']} steps; tokens per rank ÷ "
          f"all) | {', '.join(f'{w:.2f}' for w in ms['work_per_rank'])} | {ms['bytes_per_step'] / 2**10:.1f} KiB |")
    pk = m["peak"]
    print(f"\nSequence-parallel peak in stage 1, tiny model at {PEAK_REQUEST['width']}×{PEAK_REQUEST['height']}×"
          f"{PEAK_REQUEST['num_frames']} (float32): one process {pk['single'] / 2**20:.1f} MiB, ranks "
          f"{', '.join(f'{p / 2**20:.1f}' for p in pk['ranks'])} MiB (ratio {max(pk['ranks']) / pk['single']:.2f}; "
          f"the preflight's activation ratio {predicted_activation_ratio():.2f}).")
    for mode in ("guidance", "sequence"):
        print(f"Predicted guided step at 704×480×97, 22B bf16, {mode}: one M3 Ultra {a['step_1_mac']:.1f} s "
              f"({a['pass_seconds']:.1f} s per pass at {ASSUMED_TFLOPS:g} TFLOP/s), two over Thunderbolt 5 "
              f"{a[mode]['step_2_macs']:.1f} s (of which {a[mode]['link_seconds']:.2f} s exchange at "
              f"{ASSUMED_LINK_GBPS:g} GB/s).")


if __name__ == "__main__":
    main()
