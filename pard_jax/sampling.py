"""Token distributions and lossless speculative verification.

Greedy decoding is the same code path as sampling: at temperature 0 every distribution is the
one-hot of its argmax, and the acceptance test `u * q(x) < p(x)` then accepts exactly when the
draft equals the target's argmax (u < 1 always; u < 0 never), while the residual
`max(p - q, 0)` is the target's argmax. One rule, exact in both regimes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def probs_from_logits(logits_xV, temperature: float, top_k: int = 0, top_p: float = 1.0):
  """Float32 probabilities after temperature, top-k and top-p (one-hot argmax at T=0)."""
  logits_xV = logits_xV.astype(jnp.float32)
  vocab = logits_xV.shape[-1]
  if temperature == 0:
    return jax.nn.one_hot(jnp.argmax(logits_xV, axis=-1), vocab, dtype=jnp.float32)
  logits_xV = logits_xV / temperature
  neg_inf = jnp.finfo(jnp.float32).min
  if 0 < top_k < vocab:
    kth = jax.lax.top_k(logits_xV, top_k)[0][..., -1:]
    logits_xV = jnp.where(logits_xV < kth, neg_inf, logits_xV)
  if top_p < 1.0:
    sorted_desc = -jnp.sort(-logits_xV, axis=-1)
    probs_desc = jax.nn.softmax(sorted_desc, axis=-1)
    mass_before = jnp.cumsum(probs_desc, axis=-1) - probs_desc
    # The smallest logit still inside the nucleus; ties at the boundary stay in.
    cutoff = jnp.min(jnp.where(mass_before < top_p, sorted_desc, jnp.inf), axis=-1,
                     keepdims=True)
    logits_xV = jnp.where(logits_xV < cutoff, neg_inf, logits_xV)
  return jax.nn.softmax(logits_xV, axis=-1)


def sample(rng, probs_xV, greedy: bool):
  """One token id per distribution `[...]` (argmax when greedy)."""
  if greedy:
    return jnp.argmax(probs_xV, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, jnp.log(probs_xV), axis=-1).astype(jnp.int32)


def verify(rng, drafts_BxK, q_BxKxV, p_BxK1xV, greedy: bool, num_verified=None):
  """Speculative acceptance (Leviathan et al., 2023: rejection sampling, lossless).

  Args:
    drafts_BxK: draft tokens, draft i sampled from `q_BxKxV[:, i]`.
    q_BxKxV: drafter distributions.
    p_BxK1xV: target distributions at the K draft positions plus the bonus position.
    num_verified: verify only the leading drafts (a traced scalar in [0, K]; None = K): later
      ones count as rejected unseen, and after all verified are accepted the token comes from
      p at the next position. Lossless whenever the number depends on the drafts alone.
  Returns:
    num_accepted_B: leading drafts accepted, in [0, K].
    committed_BxK1: the accepted drafts followed by the correction (or bonus) token at index
      `num_accepted`; entries after it are meaningless.
  """
  batch, k = drafts_BxK.shape
  accept_rng, residual_rng = jax.random.split(rng)
  p_draft_BxK = jnp.take_along_axis(p_BxK1xV[:, :k], drafts_BxK[..., None], axis=-1)[..., 0]
  q_draft_BxK = jnp.take_along_axis(q_BxKxV, drafts_BxK[..., None], axis=-1)[..., 0]
  u_BxK = jax.random.uniform(accept_rng, (batch, k))
  accepted_BxK = u_BxK * q_draft_BxK < p_draft_BxK
  if num_verified is not None:
    accepted_BxK &= jnp.arange(k)[None] < num_verified
  num_accepted_B = jnp.sum(jnp.cumprod(accepted_BxK, axis=-1), axis=-1).astype(jnp.int32)

  # Residual at the first rejection: norm(max(p - q, 0)); after all accepted, p itself (q = 0).
  q_padded_BxK1xV = jnp.pad(q_BxKxV, ((0, 0), (0, 1), (0, 0)))
  idx = num_accepted_B[:, None, None]
  p_at_BxV = jnp.take_along_axis(p_BxK1xV, idx, axis=1)[:, 0]
  q_at_BxV = jnp.take_along_axis(q_padded_BxK1xV, idx, axis=1)[:, 0]
  if num_verified is not None:  # a bonus token after the last verified draft: q = 0
    q_at_BxV = jnp.where((num_accepted_B < num_verified)[:, None], q_at_BxV, 0.0)
  residual_BxV = jnp.maximum(p_at_BxV - q_at_BxV, 0.0)
  mass_Bx1 = jnp.sum(residual_BxV, axis=-1, keepdims=True)
  # p == q leaves no residual mass; the rejection then had probability zero, use p.
  residual_BxV = jnp.where(mass_Bx1 > 0, residual_BxV / jnp.maximum(mass_Bx1, 1e-30), p_at_BxV)
  correction_B = sample(residual_rng, residual_BxV, greedy)

  positions_K1 = jnp.arange(k + 1)
  drafts_padded_BxK1 = jnp.pad(drafts_BxK, ((0, 0), (0, 1)))
  committed_BxK1 = jnp.where(positions_K1[None] == num_accepted_B[:, None],
                             correction_B[:, None], drafts_padded_BxK1)
  return num_accepted_B, committed_BxK1
