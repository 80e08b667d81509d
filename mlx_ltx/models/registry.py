"""Which components this port can build from a checkpoint: component name (a key of
``loading.COMPONENTS``) -> function(checkpoint) returning the unloaded module, built with every
width its tensors have. ``inspect --verify`` and the conversion tests go through this table."""

from __future__ import annotations


def builders() -> dict:
    from .audio_vae import AudioDecoder, AudioEncoder
    from .connector import build_connector
    from .duration_head import duration_head_from_metadata
    from .text_projection import text_projection_from_checkpoint
    from .transformer import LTXModel
    from .upsampler import LatentUpsampler
    from .video_decoder import VideoDecoder
    from .video_vae import VideoEncoder
    from .vocoder import vocoder_from_checkpoint

    return {
        "transformer": LTXModel.build,
        "video_connector": lambda c: build_connector(c, "video_connector"),
        "audio_connector": lambda c: build_connector(c, "audio_connector"),
        "text_projection": text_projection_from_checkpoint,
        "vae_encoder": lambda c: VideoEncoder(c.config.vae, c.component_shapes("vae_encoder")),
        "vae_decoder": lambda c: VideoDecoder(c.config.vae, c.component_shapes("vae_decoder")),
        "audio_vae_encoder": lambda c: AudioEncoder(c.config.audio_vae, c.component_shapes("audio_vae_encoder")),
        "audio_vae_decoder": lambda c: AudioDecoder(c.config.audio_vae, c.component_shapes("audio_vae_decoder")),
        "vocoder": vocoder_from_checkpoint,
        "upsampler": lambda c: LatentUpsampler(c.upsampler_config),
        "duration_head": lambda c: duration_head_from_metadata(c.role_metadata("duration_head")),
    }


def load(checkpoint, name: str, dtype):
    """Build one component and load it strictly. The decoder of a diffusion video VAE (LTX-2.5) goes
    through its own loader, which applies the reference's load-time rewrites (fused qkv split, static
    gates folded, preview head dropped) that the generic key mapping does not."""
    from ..generations import describe
    from ..loading import load_component

    if name == "vae_decoder" and describe(checkpoint).video_decoder == "diffusion":
        from .diffusion_video_decoder import DiffusionVideoDecoder

        return DiffusionVideoDecoder.from_checkpoint(checkpoint, dtype=dtype)
    return load_component(checkpoint, name, builders()[name](checkpoint), dtype=dtype)
