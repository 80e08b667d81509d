"""Peak memory of convert.py on a synthetic >= 1 GB LTX checkpoint, as a ratio to the largest
output shard (the converter should hold about one shard plus the largest tensor).

    python bench/convert_memory.py [--gb 2] [--shard-gb 1] [--quantize q8]

The source takes the configuration of a committed fixture and adds large transformer-block
linear weights, so every code path of a real conversion runs. Each conversion runs in a child
process whose peak RSS (VmHWM, Linux) is reported beside the RSS of the same process before it
converted (Python + MLX baseline).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests/reference/fixtures/tiny-s1234/tiny-ltx-2.3.safetensors"

CHILD = r"""
import json, os, sys
import mlx.core as mx
from mlx_ltx.convert import convert

def hwm_kb():  # VmHWM resets at exec; ru_maxrss would carry the parent's peak over
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

base = hwm_kb()
src, out, shard, quant = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] or None
convert(src, "dev", out, shard_bytes=shard, quantize=quant, hash_sources=False, progress=lambda m: None)
peak = hwm_kb()
print(json.dumps({"baseline_kb": base, "peak_kb": peak}))
"""


def make_source(path: str, gb: float) -> int:
    import mlx.core as mx

    tensors = dict(mx.load(str(FIXTURE)))
    _, meta = mx.load(str(FIXTURE), return_metadata=True)
    n = 4096
    count = max(1, int(gb * 2**30 // (n * n * 2)))
    for i in range(count):
        key = f"model.diffusion_model.transformer_blocks.{100 + i}.ff.net.2.weight"
        tensors[key] = mx.random.normal((n, n), key=mx.random.key(i)).astype(mx.bfloat16)
    mx.save_safetensors(path, tensors, metadata=meta)
    return n * n * 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--shard-gb", type=float, default=1.0)
    ap.add_argument("--quantize", default="")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        src = os.path.join(tmp, "ltx-2.3-22b-dev.safetensors")
        largest = make_source(src, args.gb)
        shard = int(args.shard_gb * 2**30)
        out = os.path.join(tmp, "out")
        r = subprocess.run([sys.executable, "-c", CHILD, src, out, str(shard), args.quantize], check=True,
                           capture_output=True, text=True, cwd=ROOT)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        written = max(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.endswith(".safetensors"))
        peak = res["peak_kb"] * 1024
        base = res["baseline_kb"] * 1024
        print(f"source {os.path.getsize(src) / 2**30:.2f} GiB, largest tensor {largest / 2**20:.0f} MiB, "
              f"largest shard written {written / 2**30:.2f} GiB")
        print(f"peak RSS {peak / 2**30:.2f} GiB (baseline {base / 2**30:.2f} GiB): "
              f"{peak / written:.2f}x the largest shard; above baseline {(peak - base) / written:.2f}x")


if __name__ == "__main__":
    main()
