#!/usr/bin/env bash
# The command-line equivalents of the Python samples: python -m mlx_ltx.generate, one clip each.
#
# Run from the folder where the clips should go, after converting the weights as the main
# README shows (a distilled folder for the distilled commands, a dev folder converted with
# --upsamplers x2 --loras distilled for the others). Every value can be changed from the
# environment, e.g.  DEV_MODEL=~/models/ltx-2.3-dev-mlx FIRST=me.png bash samples/cli_examples.sh
# Unset sizes, frame counts, steps and guidance take the pipeline's defaults (two-stage:
# 1536x1024, 121 frames at 24 fps, seed 10; dev: 30 steps for LTX-2.3); they are spelled out
# below where a sample changes them.
set -euo pipefail

PYTHON=${PYTHON:-python}
DISTILLED_MODEL=${DISTILLED_MODEL:-ltx-2.3-distilled-mlx}
DEV_MODEL=${DEV_MODEL:-ltx-2.3-dev-mlx}
FIRST=${FIRST:-first.png}     # images for the image-conditioned clips
MIDDLE=${MIDDLE:-middle.png}
LAST=${LAST:-last.png}

# text_to_video.py: a prompt to an mp4, distilled pipeline (8 + 3 fixed steps, no guidance)
$PYTHON -m mlx_ltx.generate --model "$DISTILLED_MODEL" \
    --prompt "A red fox trots through fresh snow at dawn, its breath steaming" --output fox.mp4

# progress_callback.py: the CLI prints its own progress on stderr (see --help)
# first_last_frame.py: the first and the last frame (121 frames: frame 120 is the last)
$PYTHON -m mlx_ltx.generate --model "$DISTILLED_MODEL" --num-frames 121 \
    --image "$FIRST" 0 1.0 --image "$LAST" 120 1.0 \
    --prompt "The camera slowly pulls back from a lighthouse to reveal the stormy coast" --output first_last.mp4

# keyframes.py: keyframes at chosen frames, here with the guided dev two-stage pipeline
$PYTHON -m mlx_ltx.generate --model "$DEV_MODEL" --pipeline dev-two-stage \
    --height 1024 --width 1536 --num-frames 121 --fps 24 --seed 42 \
    --image "$FIRST" 0 1.0 --image "$MIDDLE" 60 0.8 --image "$LAST" 120 1.0 \
    --prompt "A time-lapse of a mountain lake from dawn to dusk" --output keyframes.mp4

# two_stage_custom_guidance.py: dev two-stage with guidance of your own (stage 1)
$PYTHON -m mlx_ltx.generate --model "$DEV_MODEL" --pipeline dev-two-stage --num-inference-steps 30 \
    --video-cfg-guidance-scale 4.0 --audio-cfg-guidance-scale 6.0 \
    --video-stg-guidance-scale 0.8 --audio-stg-guidance-scale 0.8 --video-stg-blocks 28 --audio-stg-blocks 28 \
    --video-rescale-scale 0.5 --audio-rescale-scale 0.5 --a2v-guidance-scale 3.0 --v2a-guidance-scale 3.0 \
    --negative-prompt "blurry, low quality, distorted" \
    --prompt "A jazz trio plays in a smoky basement club, close-up on the drummer" --output jazz.mp4

# the HQ preset (res_2s sampler, 15 steps, 1920x1088 by default); the sound also as a .wav
$PYTHON -m mlx_ltx.generate --model "$DEV_MODEL" --pipeline dev-two-stage-hq \
    --prompt "Waves crash against black volcanic rocks at sunset" --output waves.mp4 --wav waves.wav

# batch_prompts.py has no CLI equivalent that keeps the models loaded: each command loads them again
