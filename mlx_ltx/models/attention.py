"""Attention, feed-forward and the PixArt caption projection of the LTX transformer
(``ltx_core/model/transformer/attention.py``, ``ops.py``, ``feed_forward.py``,
``gelu_approx.py``, ``text_projection.py``).

Layout notes that differ from a textbook transformer:

* ``q_norm`` / ``k_norm`` are weighted RMS norms over the **whole inner dim** (heads
  concatenated), applied before the heads are split and before RoPE.
* Gated attention (LTX-2.3): ``to_gate_logits`` reads the attention *input* and scales each
  head's output by ``2·sigmoid(logit)`` before ``to_out``.
* Sequence parallelism (``sequence_parallel.py``): ``kv_gather`` hands this rank's keys and values
  (after norm and RoPE) to the other ranks and returns the whole sequence's, before the SDPA.
* STG perturbation replaces the attention output by the value projection (``to_v(context)``);
  gating and ``to_out`` still apply. A per-sample keep mask blends ``out·m + v·(1−m)``,
  which is exact for m ∈ {0, 1}, so batched and one-by-one guidance passes agree.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from .activations import gelu_tanh_rounded_once, sigmoid_rounded_once
from .rope import apply_split_rotary_emb


def rms_norm(x: mx.array, eps: float = 1e-6) -> mx.array:
    """Weightless RMS norm over the last dim (``ltx_core.utils.rms_norm``)."""
    return mx.fast.rms_norm(x, None, eps)


class Attention(nn.Module):
    """Multi-head attention with q/k RMSNorm, split RoPE, optional per-head gate, an optional
    additive mask and the STG value pass-through."""

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        norm_eps: float = 1e-6,
        apply_gated_attention: bool = False,
    ):
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.dim_head = dim_head
        self.q_norm = nn.RMSNorm(inner_dim, eps=norm_eps)
        self.k_norm = nn.RMSNorm(inner_dim, eps=norm_eps)
        self.to_q = nn.Linear(query_dim, inner_dim, bias=True)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=True)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=True)
        if apply_gated_attention:
            self.to_gate_logits = nn.Linear(query_dim, heads, bias=True)
        self.gated = apply_gated_attention
        self.to_out = [nn.Linear(inner_dim, query_dim, bias=True)]

    def _heads_first(self, t: mx.array) -> mx.array:
        B, T, _ = t.shape
        return t.reshape(B, T, self.heads, self.dim_head).transpose(0, 2, 1, 3)

    def __call__(
        self,
        x: mx.array,
        context: mx.array | None = None,
        mask: mx.array | None = None,
        pe: tuple[mx.array, mx.array] | None = None,
        k_pe: tuple[mx.array, mx.array] | None = None,
        perturbation_mask: mx.array | None = None,
        all_perturbed: bool = False,
        kv_gather=None,
    ) -> mx.array:
        context = x if context is None else context
        v = self.to_v(context)
        if all_perturbed:
            out = v
        else:
            q = self.q_norm(self.to_q(x))
            k = self.k_norm(self.to_k(context))
            q, k, vh = self._heads_first(q), self._heads_first(k), self._heads_first(v)
            if pe is not None:
                # float32 cos/sin (a caller's precision choice) rotate in float32, then round once
                q = apply_split_rotary_emb(q, *pe).astype(vh.dtype)
                k = apply_split_rotary_emb(k, *(pe if k_pe is None else k_pe)).astype(vh.dtype)
            if kv_gather is not None:
                k, vh = kv_gather(k, vh)
            if mask is not None:
                mask = mask.astype(q.dtype)
            out = mx.fast.scaled_dot_product_attention(q, k, vh, scale=1.0 / math.sqrt(self.dim_head), mask=mask)
            B, _, T, _ = out.shape
            out = out.transpose(0, 2, 1, 3).reshape(B, T, -1)
            if perturbation_mask is not None:
                out = out * perturbation_mask + v * (1 - perturbation_mask)
        if self.gated:
            gates = 2.0 * sigmoid_rounded_once(self.to_gate_logits(x))  # (B, T, H)
            B, T, _ = out.shape
            out = (out.reshape(B, T, self.heads, self.dim_head) * gates[..., None]).reshape(B, T, -1)
        return self.to_out[0](out)


class GELUApprox(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out, bias=bias)

    def __call__(self, x: mx.array) -> mx.array:
        return gelu_tanh_rounded_once(self.proj(x))


class FeedForward(nn.Module):
    """``net.0`` = Linear + GELU(tanh), ``net.1`` = identity (no weights), ``net.2`` = Linear;
    the list keeps the checkpoint's ``ff.net.{0,2}`` key names."""

    def __init__(self, dim: int, dim_out: int, mult: int = 4, bias: bool = True):
        super().__init__()
        inner_dim = int(dim * mult)
        self.net = [GELUApprox(dim, inner_dim, bias=bias), nn.Identity(), nn.Linear(inner_dim, dim_out, bias=bias)]

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.net:
            x = layer(x)
        return x


class PixArtAlphaTextProjection(nn.Module):
    """LTX-2 19B caption projection inside the transformer: linear → GELU(tanh) → linear."""

    def __init__(self, in_features: int, hidden_size: int, out_features: int | None = None):
        super().__init__()
        out_features = hidden_size if out_features is None else out_features
        self.linear_1 = nn.Linear(in_features, hidden_size, bias=True)
        self.linear_2 = nn.Linear(hidden_size, out_features, bias=True)

    def __call__(self, caption: mx.array) -> mx.array:
        return self.linear_2(gelu_tanh_rounded_once(self.linear_1(caption)))
