"""Parity of the Flax model with transformers' PyTorch models on the same weights."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from pard_jax import checkpoints
from pard_jax.config import ModelConfig
from pard_jax.errors import ConfigError
from pard_jax.model import create_model, init_cache
from tests.hf_helpers import ARCHITECTURES, hf_logits, save_hf_model

ATOL = 1e-4


# llama2 (full multi-head attention) runs in the full suite only; the fast subset keeps the
# other four.
@pytest.fixture(scope="module", params=[
    pytest.param(name, marks=pytest.mark.slow) if name == "llama2" else name
    for name in sorted(ARCHITECTURES)])
def pair(request, tmp_path_factory):
  directory = tmp_path_factory.mktemp(request.param)
  hf = save_hf_model(request.param, directory)
  return hf, checkpoints.load_model(directory)


def _positions(batch, start, length):
  return jnp.broadcast_to(jnp.arange(start, start + length), (batch, length))


def test_full_forward_matches_transformers(pair):
  hf, model = pair
  tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, (2, 11))
  ours, _ = model(jnp.asarray(tokens), _positions(2, 0, 11))
  np.testing.assert_allclose(np.asarray(ours), hf_logits(hf, tokens), atol=ATOL, rtol=0)


def test_cached_steps_match_transformers(pair):
  """Prefill, then a 4-token (verify-sized) step, then single-token steps."""
  hf, model = pair
  tokens = np.random.default_rng(1).integers(0, model.config.vocab_size, (3, 13))
  expected = hf_logits(hf, tokens)
  cache = init_cache(model.config, batch=3, max_len=32)
  chunks = [(0, 7), (7, 11), (11, 12), (12, 13)]
  for start, end in chunks:
    logits, cache = model(jnp.asarray(tokens[:, start:end]), _positions(3, start, end - start),
                          cache)
    np.testing.assert_allclose(np.asarray(logits), expected[:, start:end], atol=ATOL, rtol=0)


def test_ragged_rows_write_at_their_own_offsets(pair):
  """Rows at different lengths share one call: each row's step uses only its own prefix."""
  hf, model = pair
  rng = np.random.default_rng(2)
  lengths = [3, 8]
  seqs = [rng.integers(0, model.config.vocab_size, n + 2) for n in lengths]
  cache = init_cache(model.config, batch=2, max_len=16)
  prompt = np.zeros((2, max(lengths)), np.int64)
  for row, n in enumerate(lengths):
    prompt[row, :n] = seqs[row][:n]
  _, cache = model(jnp.asarray(prompt), _positions(2, 0, prompt.shape[1]), cache)
  step = np.stack([s[n:n + 2] for s, n in zip(seqs, lengths)])
  positions = jnp.asarray([[n, n + 1] for n in lengths])
  logits, _ = model(jnp.asarray(step), positions, cache)
  for row, n in enumerate(lengths):
    expected = hf_logits(hf, seqs[row][None])[0, n:n + 2]
    np.testing.assert_allclose(np.asarray(logits[row]), expected, atol=ATOL, rtol=0)


def test_causality_future_tokens_never_change_past_logits():
  model = create_model(ModelConfig(vocab_size=50, num_layers=2))
  rng = np.random.default_rng(3)
  tokens = rng.integers(0, 50, (1, 12))
  changed = tokens.copy()
  changed[0, 7:] = rng.integers(0, 50, 5)
  positions = _positions(1, 0, 12)
  a, _ = model(jnp.asarray(tokens), positions)
  b, _ = model(jnp.asarray(changed), positions)
  np.testing.assert_array_equal(np.asarray(a[:, :7]), np.asarray(b[:, :7]))
  assert not np.allclose(np.asarray(a[:, 7:]), np.asarray(b[:, 7:]))


@pytest.mark.slow
def test_bfloat16_compute_is_close_to_float32():
  config = ModelConfig(vocab_size=64)
  model32 = create_model(config)
  model16 = create_model(config.replace(dtype="bfloat16", param_dtype="bfloat16"))
  _, state32 = nnx.split(model32)
  nnx.update(model16, jax.tree.map(lambda x: x.astype(jnp.bfloat16), state32))
  tokens = jnp.asarray(np.random.default_rng(4).integers(0, 64, (2, 9)))
  l32, _ = model32(tokens, _positions(2, 0, 9))
  l16, _ = model16(tokens, _positions(2, 0, 9))
  assert l16.dtype == jnp.float32
  assert jax.tree.leaves(model16)[0].dtype == jnp.bfloat16
  assert float(jnp.max(jnp.abs(l32 - l16))) < 0.05


@pytest.mark.parametrize("bad, message", [
    (dict(num_heads=3, num_kv_heads=2), "multiple of num_kv_heads"),
    (dict(head_dim=15), "head_dim must be even"),
    (dict(dtype="float8"), "dtype must be one of"),
    (dict(vocab_size=0), "vocab_size must be a positive integer"),
    (dict(model_type="gpt2"), "unsupported model_type"),
    (dict(draft_vocab=(3, 2)), "draft_vocab must be ascending"),
    (dict(draft_vocab=(0, 256)), "draft_vocab must be ascending"),
    (dict(draft_vocab=()), "draft_vocab must be ascending"),
])
def test_bad_config_values_are_rejected(bad, message):
  with pytest.raises(ConfigError, match=message):
    ModelConfig(**bad)


@pytest.mark.parametrize("tied", [True, False])
def test_restricted_head_keeps_its_tokens_logits_and_round_trips(tied, tmp_path):
  config = ModelConfig(vocab_size=64, tie_word_embeddings=tied)
  model = create_model(config, 0)
  tokens = jnp.asarray(np.random.default_rng(5).integers(0, 64, (2, 7)))
  full, _ = model(tokens, _positions(2, 0, 7))
  ids = (1, 5, 6, 40, 63)
  model.config = config.replace(draft_vocab=ids)
  restricted, _ = model(tokens, _positions(2, 0, 7))
  np.testing.assert_allclose(restricted[..., ids], full[..., ids], atol=1e-5)
  outside = np.setdiff1d(np.arange(64), ids)
  assert np.all(np.isneginf(np.asarray(restricted[..., outside])))
  checkpoints.save_hf(model, tmp_path)
  assert checkpoints.load_model(tmp_path).config.draft_vocab == ids
