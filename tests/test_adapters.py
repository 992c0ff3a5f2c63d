"""A PARD drafter adapted with low-rank adapters (`train.trainable="lora"`): the adapted model
computes what its merged form computes, its training layout what decoding sees, its export
(a delta of factors, a HF directory with them folded in) loads back as the same drafter, and
decoding with it stays exact."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pard_jax import adapters, checkpoints
from pard_jax import drafter_kinds as kinds
from pard_jax.config import ModelConfig
from pard_jax.decoding import DecodeConfig, SpeculativeDecoder
from pard_jax.errors import CheckpointError
from pard_jax.model import create_model
from pard_jax.train import loop
from pard_jax.train import losses
from pard_jax.train import optimizer as optimizer_lib
from pard_jax.train import settings as train_settings
from tests.helpers import chi_square_pvalue, exact_distribution, packed_batch, tiny_train_config

TINY = ModelConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=128,
                   attention_bias=True)
MASK = 47


def adapted(config=TINY, seed=0, rank=4, scale=0.3, mask=MASK):
  """`create_model(config, seed)` with adapters and a mask row, all away from their starting
  values (a trained adapter), so every one of them changes the output."""
  model = adapters.add_adapters(create_model(config, seed), rank, (mask,), seed=seed)
  key = jax.random.key(seed + 1)
  for layer in model.layers:
    for dotted in adapters.DENSE:
      parent, name = dotted.split(".")
      lora = getattr(getattr(layer, parent), name).lora
      key, sub = jax.random.split(key)
      lora.lora_b[...] = scale * jax.random.normal(sub, lora.lora_b.shape) / rank
  model.embed_tokens.rows[...] = jax.random.normal(key, model.embed_tokens.rows.shape)
  return model


def merged(model):
  graphdef, state = nnx.split(model)
  return adapters.merge_adapters(nnx.merge(graphdef, state))


def logits_of(model, tokens_BxS):
  positions = jnp.broadcast_to(jnp.arange(tokens_BxS.shape[1]), tokens_BxS.shape)
  return np.asarray(model(jnp.asarray(tokens_BxS), positions)[0])


@pytest.mark.parametrize("draft_vocab", [None, tuple(range(0, 48, 2)) + (MASK,)])
def test_merged_equals_unmerged(draft_vocab):
  model = adapted(TINY.replace(draft_vocab=draft_vocab))
  tokens = np.array([[1, 5, 9, MASK, MASK, 3, 7, MASK]])
  plain = merged(model)
  assert not adapters.has_adapters(plain)
  np.testing.assert_allclose(logits_of(plain, tokens), logits_of(model, tokens), atol=2e-5)
  # The adapters matter: without them (fresh ones start at zero) the logits differ.
  fresh = adapters.add_adapters(create_model(TINY.replace(draft_vocab=draft_vocab), 0), 4,
                                (MASK,))
  ours, theirs = logits_of(model, tokens), logits_of(fresh, tokens)
  finite = np.isfinite(ours)
  assert np.abs(ours[finite] - theirs[finite]).max() > 1e-2


def test_fresh_adapters_compute_the_base_model_and_start_the_mask_row_at_the_mean():
  base = create_model(TINY, 0)
  fresh = adapters.add_adapters(create_model(TINY, 0), 4, (MASK,))
  tokens = np.array([[1, 5, 9, 3]])
  np.testing.assert_allclose(logits_of(fresh, tokens), logits_of(base, tokens), atol=1e-6)
  np.testing.assert_allclose(fresh.embed_tokens.rows[...][0],
                             jnp.mean(base.embed_tokens.embedding[...], axis=0), atol=1e-6)


def test_training_layout_logits_equal_inference_logits():
  """The train step's layout through the adapted model gives, at every mask slot, the logits
  the merged drafter gives at decoding: [prefix, mask x depth] under a causal mask."""
  model = adapted()
  length, counts = 14, train_settings.cod_counts(14, 4, 0.8, 0.3)
  batch = {k: jnp.asarray(v) for k, v in packed_batch([[9, 5]], length, seed=3, vocab=40).items()}
  step_cfg = train_settings.StepConfig(counts=counts, mask_tokens=(MASK,) * 3, adapters=True)
  keys = jax.random.split(jax.random.key(5), 1)
  layout, hidden = losses.layout_hidden(model, batch, keys, step_cfg)
  logits = np.asarray(model.head_logits(hidden))
  plain = merged(model)
  queries = [(s, d, t, int(batch["positions"][0, t])) for s, (d, t) in
             enumerate(zip(layout["depths"][0].tolist(), layout["index"][0].tolist()))
             if d and batch["positions"][0, t] >= d]
  assert len(queries) >= 10
  tokens = np.asarray(batch["tokens"][0])
  for s, d, t, p in queries:
    inputs = np.array([tokens[t - p:t - d + 1].tolist() + [MASK] * d])
    np.testing.assert_allclose(logits[0, s], logits_of(plain, inputs)[0, -1], atol=5e-5)


def test_only_adapters_and_mask_rows_train():
  model = adapted()
  graphdef, params = nnx.split(model)
  trainable, rest = optimizer_lib.trainable_part(params, adapters=True)
  names = {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(trainable)}
  assert names and all(n.endswith(("lora_a", "lora_b", "embed_tokens/rows")) for n in names)
  assert "embed_tokens/embedding" in {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(rest)}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
  """A tiny Qwen2-shaped base (qkv bias, tied head) saved as a HF directory."""
  path = tmp_path_factory.mktemp("base")
  checkpoints.save_hf(create_model(TINY, 0), path)
  return path


def save_adapter_delta(model, out, base):
  lora = adapters.factors(model)
  unfolded = adapters.merge_adapters(nnx.merge(*nnx.split(model)), fold_dense=False)
  return checkpoints.save_delta(unfolded, out, base, drafter=kinds.PardDrafter(MASK),
                                factors=lora)


def test_adapter_delta_round_trip(base_dir, tmp_path):
  model = adapted()
  out = save_adapter_delta(model, tmp_path / "delta", base_dir)
  stored = checkpoints.read_safetensors(out / "model.safetensors")
  assert "model.layers.0.mlp.down_proj.weight:lora_up" in stored
  # The base's dense weights are not stored: only factors and the mask row.
  assert not any(name.endswith("proj.weight") for name in stored)
  assert stored["model.embed_tokens.weight:row_ids"].tolist() == [MASK]
  loaded = checkpoints.load_model(out)
  assert checkpoints.read_config(out).drafter == kinds.PardDrafter(MASK)
  tokens = np.array([[1, 5, 9, MASK, MASK, 3]])
  # float16 factors: close, not bit-equal
  np.testing.assert_allclose(logits_of(loaded, tokens), logits_of(model, tokens), atol=5e-3)


def test_adapter_over_another_base_is_refused_before_decoding(base_dir, tmp_path):
  out = save_adapter_delta(adapted(), tmp_path / "delta", base_dir)
  other = tmp_path / "other"
  checkpoints.save_hf(create_model(TINY, 1), other)  # same shapes, other weights
  config = json.loads((out / "config.json").read_text())
  config[checkpoints.DELTA_FIELD]["base"] = str(other)
  (out / "config.json").write_text(json.dumps(config))
  with pytest.raises(CheckpointError, match="sha256"):
    checkpoints.read_config(out).delta.resolve(out)
  with pytest.raises(CheckpointError, match="sha256"):
    checkpoints.load_model(out)


@pytest.mark.slow
def test_hf_export_with_adapters_folded_in_loads_in_transformers(base_dir, tmp_path):
  import torch
  import transformers
  model = adapted()
  plain = merged(model)
  checkpoints.save_hf(plain, tmp_path / "hf", drafter=kinds.PardDrafter(MASK))
  hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
  tokens = np.array([[1, 5, 9, MASK, MASK, 3]])
  with torch.no_grad():
    theirs = hf(torch.as_tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(theirs, logits_of(model, tokens), atol=1e-4)


def _decode(target, drafter, prompts, **kwargs):
  config = DecodeConfig(drafter_kind=kinds.PardDrafter(MASK), **kwargs)
  return SpeculativeDecoder(target, drafter, config).generate(prompts, seed=kwargs.get("seed", 0))


def test_greedy_decoding_with_an_adapted_drafter_equals_ar(base_dir, tmp_path):
  target = create_model(TINY, 0)
  drafter = checkpoints.load_model(save_adapter_delta(adapted(scale=0.05), tmp_path / "d",
                                                      base_dir))
  prompts = [[1, 5, 9], [3, 7, 2, 8, 11]]
  ar = SpeculativeDecoder(target, None, DecodeConfig(max_new_tokens=20)).generate(prompts)
  pard = _decode(target, drafter, prompts, num_draft_tokens=4, max_new_tokens=20,
                 verify_threshold=0.0)
  assert pard.output_ids == ar.output_ids
  assert sum(map(sum, pard.accepted_drafts)) > 0  # some drafts are accepted: a real test


@pytest.mark.slow
def test_sampling_with_an_adapted_drafter_preserves_the_target_distribution():
  config = ModelConfig(vocab_size=6, hidden_size=16, intermediate_size=32, num_layers=1,
                       num_heads=2, num_kv_heads=1, head_dim=8, tie_word_embeddings=False)
  target = create_model(config, 0)
  target.lm_head.kernel[...] = target.lm_head.kernel[...] * 40  # confident, varied
  drafter = merged(adapted(config, seed=1, rank=2, scale=1.0, mask=5))
  drafter.lm_head.kernel[...] = drafter.lm_head.kernel[...] * 40
  prompt, steps, n = [1, 3], 3, 6000
  result = SpeculativeDecoder(target, drafter, DecodeConfig(
      drafter_kind=kinds.PardDrafter(5), num_draft_tokens=2, max_new_tokens=steps,
      temperature=1.0)).generate([prompt] * n, seed=0)
  samples = np.asarray(result.output_ids)
  assert samples.shape == (n, steps)
  assert chi_square_pvalue(samples, exact_distribution(target, prompt, steps)) > 1e-3


def test_lora_training_settings_are_checked():
  from pard_jax.errors import ConfigError
  from pard_jax.train.spec import TrainSpec
  for bad in (0, -3):
    with pytest.raises(ConfigError, match="train.lora_rank"):
      TrainSpec.from_config(tiny_train_config(trainable="lora", lora_rank=bad))


@pytest.mark.slow
def test_tiny_lora_run_exports_a_delta_and_a_hf_directory(tmp_path):
  """train.py's lora path over a HF base: the exported delta and HF directory are the same
  drafter, and the base's dense weights are not in the delta."""
  base_dir = tmp_path / "base"  # the tiny tokenizer's vocabulary; its <|mask|> is id 4
  checkpoints.save_hf(create_model(TINY.replace(vocab_size=512), 0), base_dir)
  config = tiny_train_config(num_steps=6, checkpoint_every=3, trainable="lora", lora_rank=4,
                             learning_rate=1e-2)
  config.model.init = str(base_dir)
  loop.train(config, str(tmp_path / "run"))
  delta, hf = (checkpoints.load_model(tmp_path / "run" / name) for name in ("delta", "hf"))
  tokens = np.array([[1, 5, 9, 4, 4, 3]])
  np.testing.assert_allclose(logits_of(delta, tokens), logits_of(hf, tokens), atol=5e-3)
  base = checkpoints.load_model(base_dir)
  assert np.abs(logits_of(delta, tokens) - logits_of(base, tokens)).max() > 1e-3  # it trained
  size = (tmp_path / "run" / "delta" / "model.safetensors").stat().st_size
  assert size < (base_dir / "model.safetensors").stat().st_size / 2
