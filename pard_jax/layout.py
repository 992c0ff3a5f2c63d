"""The PARD / ParallelSpec training layout with conditional drop-token (COD), in static shapes.

A packed row of L tokens becomes S = sum(counts) layout slots. Depth 0 holds the L real tokens;
depth k >= 1 holds `counts[k]` copies of the depth's mask token m_k, each at the position id of
the row index it was drawn for. A depth-k slot at position p stands for the k-th mask of the
inference input `[x_0 .. x_{p-k}, m_1 .. m_k]` and predicts x_{p+1}, like every depth. PARD
shares one mask (m_1 = ... = m_{K-1}); ParallelSpec gives every depth its own, and the same
group-wise visibility below keeps each chain of masks from seeing any other.

Visibility (query depth dq, position pq, segment sq; key dk, pk, sk), all within one segment:
  real key (dk = 0):  pk <= pq - dq
  mask key (dk >= 1): dk <= dq and pk - dk == pq - dq   (the chain of masks, itself included)
It is computed inside jit from these ids, so no (L*K)^2 tensor ever exists on the host.

COD and its edge cases. `counts[k] = min(floor(L * max(r**k, r_min)), counts[k-1] - 1)` and the
depth-k row indices are drawn uniformly without replacement among the successors (t + 1) of the
depth-(k-1) indices. Those successors number counts[k-1] or counts[k-1] - 1 (when the last index
of the row was kept), so the `- 1` cap, which only bites on the r_min plateau or for r_min = 1,
guarantees enough candidates. Successor sampling gives the chain property (depth k at t implies
depth k-1 at t-1) and starts depth k at row index k, so no slot is spent on a query that sees no
real token. With r = r_min = 1 the layout is the full K-depth layout without those k useless
slots per depth: counts = (L, L-1, ..., L-K+1). Slots whose query lacks k real tokens of its own
document (packed rows) stay in the layout with zero loss weight.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Guards floor(L * r**k) against float error (0.29 * 100 = 28.999999999999996).
def slot_depths(counts: Sequence[int]) -> np.ndarray:
  """Depth of every layout slot `[S]` (static)."""
  return np.repeat(np.arange(len(counts), dtype=np.int32), counts)


def sample_cod_indices(rng: jax.Array, counts: Sequence[int]) -> jax.Array:
  """Row index of every slot `[S]` for one row of length `counts[0]`, depth by depth, sorted."""
  length = counts[0]
  indices = [jnp.arange(length, dtype=jnp.int32)]
  kept_L = jnp.ones((length,), bool)
  for depth, count in enumerate(counts[1:], start=1):
    successor_L = jnp.concatenate([jnp.zeros((1,), bool), kept_L[:-1]])
    # Uniform scores in [0, 1) on candidates and -1 elsewhere: top_k samples without replacement.
    score_L = jnp.where(successor_L, jax.random.uniform(jax.random.fold_in(rng, depth),
                                                        (length,)), -1.0)
    chosen = jnp.sort(jax.lax.top_k(score_L, count)[1]).astype(jnp.int32)
    indices.append(chosen)
    kept_L = jnp.zeros((length,), bool).at[chosen].set(True)
  return jnp.concatenate(indices)


def build_layout(row_keys_B: jax.Array, batch: dict[str, jax.Array], counts: Sequence[int],
                 mask_tokens: Sequence[int]) -> dict[str, jax.Array]:
  """The training layout of a packed batch; every output is `[batch, S]`.

  `batch` holds `[batch, L]` arrays: tokens, positions (restarting per document), segment_ids
  (0 = padding), labels (the next token) and weights (loss weight of that label). Row b draws its
  COD sample from `row_keys_B[b]`. `mask_tokens[k - 1]` is depth k's input id. `index` is the
  row index each slot was taken from.
  """
  if len(mask_tokens) != len(counts) - 1:
    raise ValueError(f"{len(counts)} depths need {len(counts) - 1} mask tokens, got "
                     f"{tuple(mask_tokens)}")
  tokens_BxL = batch["tokens"]
  index_BxS = jax.vmap(lambda key: sample_cod_indices(key, counts))(row_keys_B)
  depth_S = jnp.asarray(slot_depths(counts))
  mask_S = jnp.asarray(np.asarray([0, *mask_tokens], np.int32)[slot_depths(counts)])
  gather = lambda x_BxL: jnp.take_along_axis(x_BxL, index_BxS, axis=1)
  positions_BxS = gather(batch["positions"])
  depth_BxS = jnp.broadcast_to(depth_S, index_BxS.shape)
  return dict(
      tokens=jnp.where(depth_S == 0, gather(tokens_BxL), mask_S).astype(tokens_BxL.dtype),
      positions=positions_BxS,
      segment_ids=gather(batch["segment_ids"]),
      depths=depth_BxS,
      labels=gather(batch["labels"]),
      # A depth-k query needs k real tokens of its own document before its chain.
      weights=gather(batch["weights"]) * (positions_BxS >= depth_BxS),
      index=index_BxS,
  )


def attention_mask(depths_BxS: jax.Array, positions_BxS: jax.Array,
                   segment_ids_BxS: jax.Array) -> jax.Array:
  """Boolean visibility `[batch, S(query), S(key)]` of the PARD layout from its ids."""
  dq, pq, sq = (x[:, :, None] for x in (depths_BxS, positions_BxS, segment_ids_BxS))
  dk, pk, sk = (x[:, None, :] for x in (depths_BxS, positions_BxS, segment_ids_BxS))
  anchor = pq - dq  # the last real token the query may see
  sees_real = (dk == 0) & (pk <= anchor)
  sees_chain = (dk >= 1) & (dk <= dq) & (pk - dk == anchor)
  return (sq == sk) & (sees_real | sees_chain)
