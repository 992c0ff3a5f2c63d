"""PARD layout and COD against brute-force references written from the definition."""

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pard_jax.train import settings as train_settings
from pard_jax import layout
from pard_jax.config import ModelConfig
from pard_jax.model import create_model

from tests.helpers import packed_batch

MASK = 7


def masks_for(counts, distinct):
  """Depth k's mask id: PARD's shared one, or ParallelSpec's distinct ids 60, 61, ..."""
  return tuple(59 + k if distinct else MASK for k in range(1, len(counts)))


def make_layout(batch, counts, seed=0, distinct=False):
  keys = jax.random.split(jax.random.key(seed), batch["tokens"].shape[0])
  fn = jax.jit(lambda k, b: layout.build_layout(k, b, counts, masks_for(counts, distinct)))
  out = jax.device_get(fn(keys, batch))
  out["mask"] = np.asarray(jax.jit(layout.attention_mask)(
      out["depths"], out["positions"], out["segment_ids"]))
  return out


def inference_keys(batch_row, depth, index):
  """(depth, row index) of every token the inference input [x_0..x_{p-k}, m x k] holds."""
  p = batch_row["positions"][index]
  doc_start = index - p
  real = {(0, t) for t in range(doc_start, index - depth + 1)}
  return real | {(j, index - depth + j) for j in range(1, depth + 1)}


def test_published_counts():
  assert train_settings.cod_counts(512, 8, 0.7, 0.2) == (512, 358, 250, 175, 122, 102, 101, 100)
  # r_min plateau: strictly decreasing by one so successors always suffice.
  assert train_settings.cod_counts(100, 6, 0.5, 0.3) == (100, 50, 30, 29, 28, 27)
  # r = r_min = 1 is the full layout without the queries that see no real token.
  assert train_settings.cod_counts(16, 4, 1.0, 1.0) == (16, 15, 14, 13)
  assert train_settings.cod_counts(100, 2, 0.29, 0.0) == (100, 29)  # no float floor error


@pytest.mark.parametrize("args, field", [
    ((16, 0, 0.7, 0.2), "num_draft_tokens"), ((3, 4, 0.7, 0.2), "length"),
    ((16, 4, 0.0, 0.2), "r must"), ((16, 4, 1.5, 0.2), "r must"),
    ((16, 4, 0.7, -0.1), "r_min"), ((16, 4, 0.7, 1.1), "r_min")])
def test_counts_validation(args, field):
  with pytest.raises(ValueError, match=field):
    train_settings.cod_counts(*args)


@pytest.mark.slow
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(num_depths=st.integers(1, 5), extra=st.integers(0, 20),
       r=st.floats(0.05, 1.0), r_min=st.floats(0.0, 1.0), seed=st.integers(0, 2**16),
       distinct=st.booleans(), data=st.data())
def test_mask_matches_inference_and_chain(num_depths, extra, r, r_min, seed, distinct, data):
  length = num_depths + extra
  counts = train_settings.cod_counts(length, num_depths, r, r_min)
  split = data.draw(st.integers(1, length))  # two packed documents when split < length
  batch = packed_batch([[split, length - split] if split < length else [length]], length, seed)
  out = make_layout(batch, counts, seed, distinct)
  row = {k: v[0] for k, v in batch.items()}
  depth, index, mask = out["depths"][0], out["index"][0], out["mask"][0]
  assert len(depth) == sum(counts)
  np.testing.assert_array_equal(np.bincount(depth, minlength=num_depths), counts)
  slots = {(d, t): s for s, (d, t) in enumerate(zip(depth.tolist(), index.tolist()))}
  assert len(slots) == len(depth), "a row index is kept twice at one depth"
  for (d, t) in slots:
    if d:  # chain property: the successor rule keeps the previous depth's predecessor
      assert (d - 1, t - 1) in slots
  for s, (d, t) in enumerate(zip(depth.tolist(), index.tolist())):
    seen = {(int(depth[k]), int(index[k])) for k in np.flatnonzero(mask[s])}
    assert (d, t) in seen
    assert all(row["segment_ids"][i] == row["segment_ids"][t] for _, i in seen)
    valid = row["positions"][t] >= d
    assert (out["weights"][0, s] > 0) == (valid and row["weights"][t] > 0)
    if valid:
      assert seen == inference_keys(row, d, t)
  masks = np.asarray((0,) + masks_for(counts, distinct))
  np.testing.assert_array_equal(out["tokens"][0],
                                np.where(depth == 0, row["tokens"][index], masks[depth]))
  np.testing.assert_array_equal(out["labels"][0], row["labels"][index])


def test_cod_samples_cover_all_successors():
  """Over many draws every successor of the previous depth is sometimes kept (no bias to 0)."""
  counts = train_settings.cod_counts(12, 3, 0.6, 0.2)
  draw = jax.jit(jax.vmap(lambda k: layout.sample_cod_indices(k, counts)))
  indices = np.asarray(draw(jax.random.split(jax.random.key(0), 200)))
  depth = layout.slot_depths(counts)
  assert set(indices[:, depth == 1].ravel().tolist()) == set(range(1, 12))
  assert set(indices[:, depth == 2].ravel().tolist()) == set(range(2, 12))
  assert len({tuple(row) for row in indices}) > 150  # rows draw independently


def test_mask_token_count_is_checked():
  with pytest.raises(ValueError, match="4 depths need 3 mask tokens"):
    layout.build_layout(jax.random.split(jax.random.key(0), 1), packed_batch([[8]], 8),
                        (8, 5, 3, 2), (7, 7))


@pytest.mark.parametrize("distinct", [False, True], ids=["pard", "parallelspec"])
def test_training_logits_equal_inference_logits(distinct):
  config = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                       num_heads=4, num_kv_heads=2, head_dim=8)
  model = create_model(config, seed=1)
  length, counts = 14, train_settings.cod_counts(14, 4, 0.8, 0.3)
  batch = packed_batch([[9, 5]], length, seed=3, vocab=64)
  out = make_layout(batch, counts, seed=5, distinct=distinct)
  masks = masks_for(counts, distinct)
  forward = jax.jit(lambda x, q, m=None: model(x, q, attn_mask_BxSxT=m)[0])
  logits = forward(out["tokens"], out["positions"], out["mask"])
  queries = [(s, d, t, int(batch["positions"][0, t]))
             for s, (d, t) in enumerate(zip(out["depths"][0].tolist(), out["index"][0].tolist()))
             if d and batch["positions"][0, t] >= d]
  # Inference inputs [prefix, mask x d], right-padded (causal: padding is never seen).
  inputs = np.zeros((len(queries), length), np.int32)
  for i, (_, d, t, p) in enumerate(queries):
    inputs[i, :p + 1] = batch["tokens"][0, t - p:t - d + 1].tolist() + list(masks[:d])
  positions = np.broadcast_to(np.arange(length), inputs.shape)
  expected = forward(inputs, positions)
  assert len(queries) >= 10
  for i, (s, _, _, p) in enumerate(queries):
    np.testing.assert_allclose(logits[0, s], expected[i, p], atol=2e-5, rtol=2e-5)
