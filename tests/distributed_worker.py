"""One rank of the guidance-parallel tests (tests/test_distributed.py), started by ``mlx.launch``.

    mlx.launch -n 2 --backend ring -- python tests/distributed_worker.py run SET OUT PIPELINE...
    mlx.launch -n 2 --backend ring -- python tests/distributed_worker.py cli [--die-at-step K] -- GENERATE ARGS...

``run``: each pipeline generates the fixture set's e2e request (its seed, no injected draws) with
the guided passes shared across the ranks; rank 0 saves the latents, frames and waveform to
``OUT/<pipeline>.npz``. ``cli``: ``python -m mlx_ltx.generate`` with its arguments; a ``--model``
value ``A|B`` gives rank 0 model A and the other ranks B (the mismatch test); ``--die-at-step K``
makes rank 1 vanish (``os._exit``) when the ranks exchange guidance outputs for the K-th time.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

RANK = int(os.environ.get("MLX_RANK", "0"))


def run(set_dir: str, out_dir: str, names: list[str]) -> int:
    import mlx.core as mx
    from reference_data import FixtureSet
    from test_e2e import make_pipeline, request

    from mlx_ltx.distributed import check_same_model, init_parallel

    fs = FixtureSet(Path(set_dir))
    meta = fs.manifest["e2e"]
    parallel = init_parallel("guidance")
    assert parallel is not None and parallel.size >= 2, "launch with mlx.launch -n 2"
    for name in names:
        pipe = make_pipeline(fs, name, meta)
        check_same_model(parallel, pipe.checkpoint)
        pipe.parallel = parallel
        result = pipe.generate(meta["prompt"], **request(fs, name, meta))
        if parallel.rank == 0:
            np.savez(Path(out_dir) / f"{name}.npz", video_latent=np.array(result.video_latent.astype(mx.float32)),
                     audio_latent=np.array(result.audio_latent.astype(mx.float32)), frames=result.frames,
                     audio=result.audio)
        else:
            assert result.frames is None and result.path is None  # only rank 0 decodes and writes
            assert pipe._text_encoder is None  # nor does it load the text encoder: rank 0's contexts
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
        real, calls = distributed.share_pass_outputs, [0]

        def share(*args, **kwargs):
            calls[0] += 1
            if RANK == 1 and calls[0] == die_at:
                os._exit(3)  # a rank that vanishes mid-run (killed, crashed, unplugged)
            return real(*args, **kwargs)

        distributed.share_pass_outputs = share
    return main(argv)


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    sys.exit(run(rest[0], rest[1], rest[2:]) if mode == "run" else cli(rest))
