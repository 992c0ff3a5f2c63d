"""Target-feature drafters (PARD-2 / P-EAGLE style): exact decoding with the parallel kinds
(one shared mask, distinct masks) and the autoregressive peer, the features the loop carries,
token-only ("dual") mode, and refusal of a target the drafter was not built for."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pard_jax import checkpoints, drafting
from pard_jax import drafter_kinds as kinds
from pard_jax.config import ModelConfig
from pard_jax.decoding import DecodeConfig, DecodeError, SpeculativeDecoder
from pard_jax.errors import ConfigError
from pard_jax.eval.spec import EvalSpec
from pard_jax.model import create_model, init_cache
from pard_jax.train import losses
from pard_jax.train import settings as train_settings
from tests.helpers import (ROOT, chi_square_pvalue, exact_distribution, feature_drafter,
                           load_config, packed_batch, without_features)

TARGET = ModelConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_layers=3,
                     num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=128)
LAYERS = (0, -1)
MASKS = {"pard": (39,), "parallelspec": (36, 37, 38), "sd": ()}
KINDS = {"pard": kinds.PardDrafter(39, LAYERS),
         "parallelspec": kinds.ParallelSpecDrafter((36, 37, 38), LAYERS),
         "sd": kinds.AutoregressiveDrafter(LAYERS)}


@functools.lru_cache(maxsize=None)
def models(seed=0):
  target = create_model(TARGET, seed)
  return target, feature_drafter(target, LAYERS, num_layers=1, seed=seed + 1)


def generate(target, drafter, kind, prompts, **settings):
  cfg = DecodeConfig(drafter_kind=kind, **settings)
  return SpeculativeDecoder(target, drafter, cfg).generate(prompts, seed=settings.get("seed", 0))


SLOW = pytest.mark.slow


@pytest.mark.parametrize("method, verify_threshold", [
    ("pard", 0.0), pytest.param("sd", 0.05, marks=SLOW), pytest.param("pard", 0.05, marks=SLOW),
    pytest.param("parallelspec", 0.0, marks=SLOW), pytest.param("parallelspec", 0.05, marks=SLOW),
    pytest.param("sd", 0.0, marks=SLOW)])
def test_greedy_feature_drafting_equals_autoregressive(method, verify_threshold):
  target, drafter = models()
  prompts = [[1, 2, 3, 4], [5], [6, 7]]
  common = dict(max_new_tokens=14, stop_token_ids=(3,))
  ar = generate(target, None, kinds.NoDrafter(), prompts, **common)
  spec = generate(target, drafter, KINDS[method], prompts, num_draft_tokens=4,
                  verify_threshold=verify_threshold, **common)
  assert spec.output_ids == ar.output_ids


@pytest.mark.slow
def test_features_change_the_drafts():
  """The features reach the drafter: without them the same weights draft differently."""
  target, drafter = models()
  prompts = [[1, 2, 3, 4], [5, 9, 9]]
  settings = dict(num_draft_tokens=4, max_new_tokens=12)
  with_them = generate(target, drafter, KINDS["pard"], prompts, **settings)
  alone = generate(target, drafter, KINDS["pard"].without_features(), prompts, **settings)
  assert with_them.accepted_drafts != alone.accepted_drafts


@pytest.mark.slow
def test_loop_carries_the_targets_features():
  """After decoding, the feature buffer holds at every committed position what a fresh target
  forward over the whole output gives there."""
  target, drafter = models()
  prompts = [[1, 2, 3, 4, 5], [6, 7]]
  cfg = DecodeConfig(drafter_kind=KINDS["pard"], num_draft_tokens=3, max_new_tokens=10)
  decoder = SpeculativeDecoder(target, drafter, cfg)
  run = decoder._executable(2, 5)  # pylint: disable=protected-access
  tokens = np.zeros((2, 15), np.int32)
  for row, prompt in enumerate(prompts):
    tokens[row, :len(prompt)] = prompt
  state = run(target_params=decoder.target_params, drafter_params=decoder.drafter_params,
              tokens_BxT=jnp.asarray(tokens), prompt_lengths_B=jnp.asarray([5, 2], jnp.int32),
              seed=jnp.int32(0))
  for row in range(2):
    length = int(state.lengths_B[row])
    sequence = state.tokens_BxT[row:row + 1, :length]
    _, _, fresh = target.backbone_features(sequence, jnp.arange(length)[None],
                                           feature_layers=LAYERS)
    # The last committed token is pending: the target has not run on it yet.
    np.testing.assert_allclose(state.features_BxTxC[row, :length - 1], fresh[0, :length - 1],
                               atol=2e-5, rtol=1e-5)


def test_token_only_mode_is_the_pard1_path():
  """Dual mode: a feature drafter decoded without features drafts exactly as the same weights
  without the feature input (a PARD-1 drafter)."""
  target, drafter = models()
  prompts = [[1, 2, 3], [4, 5, 6, 7]]
  settings = dict(num_draft_tokens=4, max_new_tokens=12)
  dual = generate(target, drafter, KINDS["pard"].without_features(), prompts, **settings)
  plain = generate(target, without_features(drafter), kinds.PardDrafter(39), prompts,
                   **settings)
  assert dual.accepted_drafts == plain.accepted_drafts
  assert dual.output_ids == plain.output_ids


SAMPLING = ModelConfig(vocab_size=5, hidden_size=16, intermediate_size=32, num_layers=2,
                       num_heads=2, num_kv_heads=1, head_dim=8)


@pytest.mark.parametrize("method", [pytest.param("pard", marks=SLOW),
                                    pytest.param("sd", marks=SLOW)])
def test_feature_sampling_preserves_target_distribution(method):
  target = create_model(SAMPLING, 0)
  target.lm_head.kernel[...] = target.lm_head.kernel[...] * 40
  drafter = feature_drafter(target, (0, 1), num_layers=1, seed=1)
  drafter.lm_head.kernel[...] = drafter.lm_head.kernel[...] * 10
  kind = {"pard": kinds.PardDrafter(4, (0, 1)), "sd": kinds.AutoregressiveDrafter((0, 1))}[method]
  prompt, steps = [1, 3], 3
  result = generate(target, drafter, kind, [prompt] * 6000, num_draft_tokens=2,
                    max_new_tokens=steps, temperature=1.0)
  samples = np.asarray(result.output_ids)
  assert chi_square_pvalue(samples, exact_distribution(target, prompt, steps)) > 1e-3


@pytest.mark.parametrize("layers, hidden, message", [
    ((0, 5), 32, r"reads target layers \[0, 5\], but the target has 3 layers"),
    ((0, 1), 48, r"2 layers of this target give 2 x 48 = 96: it was trained for another"),
])
def test_a_target_the_drafter_was_not_built_for_is_refused(layers, hidden, message):
  target = create_model(TARGET.replace(hidden_size=hidden), 0)
  _, drafter = models()
  with pytest.raises(DecodeError, match=message):
    SpeculativeDecoder(target, drafter, DecodeConfig(drafter_kind=kinds.PardDrafter(39, layers)))


def test_the_autoregressive_peer_needs_the_targets_width():
  """It feeds its own hidden state where the target's goes: a narrower drafter is refused."""
  narrow = TARGET.replace(hidden_size=16, head_dim=4, num_layers=1,
                          feature_size=2 * TARGET.hidden_size, num_feature_layers=2)
  peer = kinds.AutoregressiveDrafter(LAYERS)
  assert kinds.feature_layout_error(peer, narrow.replace(hidden_size=32), TARGET) is None
  assert "its width is 16 and the target's 32" in kinds.feature_layout_error(peer, narrow, TARGET)
  assert kinds.feature_layout_error(kinds.PardDrafter(39, LAYERS), narrow, TARGET) is None


def test_feature_kinds_round_trip_through_config_json():
  for kind in KINDS.values():
    assert kinds.from_hf(kind.to_hf()) == kind
    assert kinds.for_method(kind.method, kind) == kind
  assert kinds.for_method("pard", KINDS["pard"], (38,)) == kinds.PardDrafter(38, LAYERS)


def layout_inputs(masks, **step_settings):
  """A 14-token packed row of two documents, its step settings, the online target's features
  over it and the row's key: the training-layout inputs of the feature tests."""
  target, _ = models()
  batch = packed_batch([[9, 5]], 14, seed=3, vocab=36)
  step_cfg = train_settings.StepConfig(train_settings.cod_counts(14, 4, 0.8, 0.3), masks,
                                 feature_layers=LAYERS, **step_settings)
  graphdef, params = nnx.split(target)
  _, features = losses.teacher_outputs(params, graphdef, batch, step_cfg)
  return step_cfg, batch, features, jax.random.split(jax.random.key(5), 1)


@pytest.mark.parametrize("method", [pytest.param("pard", marks=SLOW),
                                    pytest.param("parallelspec", marks=SLOW),
                                    pytest.param("sd", marks=SLOW)])
def test_training_layout_logits_equal_inference_logits(method):
  """Each slot of the training layout, with features from the online target, gives the logits
  of the input decoding feeds the drafter for that draft: real tokens with the features of
  their previous positions, then the masks (or, for the AR peer, the drafted tokens)."""
  _, drafter = models()
  masks = {"pard": (39,) * 3, "parallelspec": (36, 37, 38), "sd": (39,) * 3}[method]
  length = 14
  step_cfg, batch, features, keys = layout_inputs(masks, autoregressive=method == "sd")
  out, hidden = losses.layout_hidden(drafter, batch, keys, step_cfg, features)
  logits = drafter.logits(hidden)
  queries = [(s, d, t, int(batch["positions"][0, t]))
             for s, (d, t) in enumerate(zip(out["depths"][0].tolist(), out["index"][0].tolist()))
             if d and batch["positions"][0, t] >= d]
  assert len(queries) >= 10
  # Each query's inference input, right-padded (causal: padding is never seen), and the
  # target's features by position within its document, as the loop keeps them.
  inputs = np.zeros((len(queries), length), np.int32)
  doc_features = np.zeros((len(queries), length, features.shape[-1]), np.float32)
  real = np.zeros((len(queries), length), bool)
  for i, (_, d, t, p) in enumerate(queries):
    start = t - p  # the document's first row index
    chain = (batch["tokens"][0, t - d + 1:t + 1].tolist() if method == "sd"
             else list(masks[:d]))
    inputs[i, :p + 1] = batch["tokens"][0, start:t - d + 1].tolist() + chain
    doc_features[i, :p + 1] = features[0, start:start + p + 1]
    real[i, :p - d + 1] = True
  positions = jnp.broadcast_to(jnp.arange(length), inputs.shape)

  @jax.jit
  def inference_logits(inputs, features, real):
    extra = drafting.feature_input(drafter, features, positions, real)
    return drafter.logits(drafter.backbone(inputs, positions, extra_BxSxD=extra)[0])
  if method == "sd":
    expected = [autoregressive_logits(drafter, inputs[i], doc_features[i], p - d, p)
                for i, (_, d, _, p) in enumerate(queries)]
  else:
    expected = inference_logits(inputs, doc_features, real)[np.arange(len(queries)),
                                                             [q[3] for q in queries]]
  for i, (s, _, _, _) in enumerate(queries):
    np.testing.assert_allclose(logits[0, s], expected[i], atol=3e-5, rtol=3e-5)


@pytest.mark.slow
@pytest.mark.parametrize("feedback_gradient", [False, True])
def test_the_peers_feedback_gradient_is_the_true_gradient_only_when_asked(feedback_gradient):
  """EAGLE-3's training-time test backpropagates through the states the peer feeds itself:
  with `feedback_gradient` the step's gradient matches a finite difference of its loss along
  a random direction; without it (the fed-back states held constant) it does not, while the
  loss is the same either way."""
  _, drafter = models()
  step_cfg, batch, features, keys = layout_inputs((39,) * 3, autoregressive=True,
                                                  feedback_gradient=feedback_gradient)
  graphdef, params = nnx.split(drafter)
  loss = jax.jit(lambda p: losses.layout_loss(p, graphdef, batch, keys, step_cfg,
                                                features_BxLxC=features)[0])
  gradient = jax.grad(loss)(params)
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(0)
  direction = jax.tree.unflatten(treedef, [rng.standard_normal(x.shape).astype(np.float32)
                                           for x in leaves])
  along = lambda t: jax.tree.map(lambda p, v: p + t * v, params, direction)
  eps = 1e-3
  finite_difference = (loss(along(eps)) - loss(along(-eps))) / (2 * eps)
  directional = sum(jnp.vdot(g, v) for g, v in zip(jax.tree.leaves(gradient),
                                                   jax.tree.leaves(direction)))
  error = abs(float(directional - finite_difference)) / abs(float(finite_difference))
  # Measured: 4e-4 with the feedback gradient, 0.045 without.
  assert error < 5e-3 if feedback_gradient else error > 0.02, (error, directional,
                                                                finite_difference)
  plain = dataclasses.replace(step_cfg, feedback_gradient=not feedback_gradient)
  np.testing.assert_allclose(loss(params), losses.layout_loss(
      params, graphdef, batch, keys, plain, features_BxLxC=features)[0], rtol=1e-6)


def autoregressive_logits(drafter, inputs, features, last_real, position):
  """The AR feature peer's logits at `position` as decoding computes them, one token per cached
  forward: the real tokens up to `last_real` with the target's features, then each drafted
  token with the drafter's own last residual stream."""
  cache = init_cache(drafter.config, 1, len(inputs))
  positions = jnp.arange(last_real + 1)[None]
  extra = drafting.feature_input(drafter, jnp.asarray(features)[None], positions,
                                 jnp.ones_like(positions, bool))
  hidden, cache, own = drafter.backbone_features(jnp.asarray(inputs[:last_real + 1])[None],
                                                 positions, cache, feature_layers=(-1,),
                                                 extra_BxSxD=extra)
  for p in range(last_real + 1, position + 1):
    hidden, cache, own = drafter.backbone_features(
        jnp.asarray([[inputs[p]]]), jnp.asarray([[p]]), cache, feature_layers=(-1,),
        extra_BxSxD=drafter.own_feature_embeddings(own[:, -1:]))
  return drafter.logits(hidden)[0, -1]


def test_feature_drafter_round_trips_as_hf_directory_and_delta(tmp_path):
  target, drafter = models()
  checkpoints.save_hf(target, tmp_path / "target")
  checkpoints.save_hf(drafter, tmp_path / "hf", drafter=KINDS["pard"])
  checkpoints.save_delta(drafter, tmp_path / "delta", tmp_path / "target", keep_layers=(0,),
                         dtype="float32", drafter=KINDS["pard"])
  for path in (tmp_path / "hf", tmp_path / "delta"):
    declared = checkpoints.read_config(path)
    assert declared.drafter == KINDS["pard"] and declared.model.num_feature_layers == 2
    loaded = checkpoints.load_model(path)
    for (name, a), (_, b) in zip(nnx.to_flat_state(nnx.state(drafter)),
                                 nnx.to_flat_state(nnx.state(loaded))):
      np.testing.assert_allclose(a[...], b[...], atol=1e-6, err_msg=str(name))


def test_decode_py_refuses_a_target_without_the_drafters_features(tmp_path, no_model_loading):
  _, drafter = models()
  checkpoints.save_hf(create_model(TARGET.replace(hidden_size=48, head_dim=12), 0),
                      tmp_path / "other")
  checkpoints.save_hf(drafter, tmp_path / "drafter", drafter=KINDS["pard"])
  config = load_config("configs/decode.py")
  config.update(dict(target=str(tmp_path / "other"), drafter=str(tmp_path / "drafter"),
                     method="pard", prompts=str(ROOT / "data/prompts/chat.jsonl")))
  with pytest.raises(ConfigError, match=r"config.target: the drafter reads 64 feature values"):
    EvalSpec.from_config(config)
  config.use_target_features = False  # token-only: any target of the vocabulary will do
  assert EvalSpec.from_config(config).drafter_kinds["pard", ""] == kinds.PardDrafter(39)
