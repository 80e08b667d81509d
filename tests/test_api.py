"""The public Python API: the package's top-level names (imported lazily, so ``import mlx_ltx``
stays cheap); the README's Python API snippet, run as written on the fixture set's tiny
checkpoint with only its paths and sizes (and step count) adapted, and its STG block moved into
the tiny transformer's depth; prompt enhancement leaving MLX's global random state alone."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
from PIL import Image
from reference_data import FixtureSet, fixture_dirs
from test_media import _decode_audio, _read_frames
from test_text_encoder import _CHAT_TEMPLATE, ASSETS

from mlx_ltx.models.text_encoder import TextEncoder, keyed_sampler

REPO = Path(__file__).parent.parent
FS = FixtureSet(fixture_dirs()[0])  # the first (tiny) set: this checks the plumbing


LAZY_IMPORT_CHECK = """
import sys
import mlx_ltx
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'numpy', 'mlx_lm') or m.startswith('mlx_ltx.'))
assert not heavy, heavy

from mlx_ltx import Pipeline, ImageConditioningInput, Checkpoint, list_pipelines
from mlx_ltx import GenerationResult, MultiModalGuiderParams
import mlx_ltx.pipelines as p, mlx_ltx.conditioning as c, mlx_ltx.loading as l, mlx_ltx.guidance as g
assert (Pipeline, GenerationResult, list_pipelines) == (p.Pipeline, p.GenerationResult, p.list_pipelines)
assert (ImageConditioningInput, MultiModalGuiderParams) == (c.ImageConditioningInput, g.MultiModalGuiderParams)
assert Checkpoint is l.Checkpoint
assert set(list_pipelines()) == {'distilled', 'dev', 'dev-two-stage', 'dev-two-stage-hq', 'keyframe-interpolation', 't2a',
                                'retake', 'ic-lora', 'a2vid'}
assert set(mlx_ltx.__all__) <= set(dir(mlx_ltx))
try:
    mlx_ltx.no_such_name
except AttributeError as e:
    assert 'no_such_name' in str(e)
else:
    raise AssertionError('no AttributeError')
"""


def test_import_is_lazy_and_exports_the_entry_points():
    """In a fresh interpreter: ``import mlx_ltx`` loads neither MLX nor any submodule; the
    top-level names are the modules' own objects."""
    out = subprocess.run([sys.executable, "-c", LAZY_IMPORT_CHECK], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def readme_snippet() -> str:
    """The first python block of the README's Python API section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def adapt(snippet: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in snippet, f"the README's Python API snippet no longer contains {old!r}"
        snippet = snippet.replace(old, new)
    return snippet


def test_readme_python_api_snippet_runs(tmp_path):
    t, sh, sw = FS.checkpoint.config.vae.scale_factors
    last_block = FS.checkpoint.config.transformer.num_layers - 1
    height, width, num_frames = 2 * 2 * sh, 3 * 2 * sw, t + 1  # dev-two-stage: stage 1 at half size
    Image.fromarray(np.full((40, 60, 3), (200, 30, 30), np.uint8)).save(tmp_path / "first.png")
    side_files = {"gemma": str(FS.path / FS.manifest["gemma_dir"]),
                  "upsampler": str(FS.upsampler_path("spatial-x2")),
                  "distilled_lora": str(FS.path / FS.manifest["loras"]["test"])}
    code = adapt(readme_snippet(), {
        '"ltx-2.3-dev-mlx"': f"{str(FS.checkpoint_path)!r}, **{side_files!r}",
        "height=1024, width=1536, num_frames=121": f"height={height}, width={width}, num_frames={num_frames}",
        "num_inference_steps=30": "num_inference_steps=3",
        '"first.png"': repr(str(tmp_path / "first.png")),
        '"clip.mp4"': repr(str(tmp_path / "clip.mp4")),
        "stg_blocks=(28,)": f"stg_blocks=({last_block},)",
    })
    scope: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), scope)
    result = scope["result"]

    assert result.frames.dtype == np.uint8 and result.frames.shape == (num_frames, height, width, 3)
    assert result.sample_rate > 0 and result.audio.dtype == np.float32
    assert result.audio.shape == (2, round(num_frames / 24 * result.sample_rate))  # exactly F / fps seconds
    path = tmp_path / "clip.mp4"
    assert result.path is not None and Path(result.path) == path and path.stat().st_size > 0
    meta, frames = _read_frames(path)
    assert frames.shape == (num_frames, height, width, 3) and meta["fps"] == 24
    assert len(_decode_audio(path)) > 0


def test_keyed_sampler_depends_only_on_its_key():
    def draws(key, logprobs, n=16):
        sample = keyed_sampler(key, temp=0.7, top_k=50)
        return [sample(logprobs).item() for _ in range(n)]

    uniform = mx.log(mx.full((1, 1000), 1e-3))
    first = draws(mx.random.key(0), uniform)
    assert draws(mx.random.key(0), uniform) == first != draws(mx.random.key(1), uniform)
    assert len(set(first)) > 1  # a fresh subkey per call
    # top-k: only the 50 most likely tokens are ever drawn, though the others are nearly as likely
    ramp = mx.log(mx.softmax(mx.arange(1000, dtype=mx.float32) / 100))[None]
    assert min(draws(mx.random.key(2), ramp, 32)) >= 1000 - 50


def test_prompt_enhancement_leaves_the_global_rng_alone(tmp_path):
    """The enhancement samples from its own key: an app's global MLX random stream continues as
    if the call had not happened (it used to be reseeded), and the text depends on the seed
    only, not on that state."""
    folder = tmp_path / "gemma"
    shutil.copytree(FS.path / FS.manifest["gemma_dir"], folder)
    for f in (ASSETS / "tiny_tokenizer").iterdir():
        shutil.copy(f, folder / f.name)
    (folder / "chat_template.jinja").write_text(_CHAT_TEMPLATE)
    te = TextEncoder(folder, FS.checkpoint, dtype=mx.float32)
    te.gemma  # built first: mlx.nn's initialisers draw from the global state (the weights then replace them)

    mx.random.seed(7)
    control = [np.array(mx.random.normal((8,))) for _ in range(2)]
    mx.random.seed(7)
    before = np.array(mx.random.normal((8,)))
    text = te.enhance_prompt("a fox in the snow", seed=3, max_new_tokens=24)
    after = np.array(mx.random.normal((8,)))
    np.testing.assert_array_equal(before, control[0])
    np.testing.assert_array_equal(after, control[1])

    mx.random.seed(12345)  # another global state: the same text for the same seed
    assert te.enhance_prompt("a fox in the snow", seed=3, max_new_tokens=24) == text
    assert text and te.enhance_prompt("a fox in the snow", seed=4, max_new_tokens=24) != text
