"""Train step (sharded vs single device, accumulation), schedules, config checks, tiny runs."""

import importlib.util
import itertools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import transformers
from flax import nnx
from jax.sharding import PartitionSpec as P

from pard_jax import checkpoints, layout, sharding
from pard_jax import packing
from pard_jax import drafter_kinds as kinds
from pard_jax.checkpoints import assets
from pard_jax.errors import ConfigError
from pard_jax.train import checkpointing, loop
from pard_jax.train import losses
from pard_jax.train import optimizer as optimizer_lib
from pard_jax.train import settings as train_settings
from pard_jax.train import step as step_lib
from pard_jax.train.spec import TrainSpec
from pard_jax.config import ModelConfig
from pard_jax.eval import job
from pard_jax.model import create_model

from tests.helpers import ROOT, load_config, packed_batch, tiny_train_config

CONFIG = ModelConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=16)


def test_schedules():
  base = dict(learning_rate=1.0, warmup_steps=10, total_steps=110)
  for kind, at_60, at_110 in [("constant", 1.0, 1.0), ("cosine", 0.5, 0.0),
                              ("linear", 0.5, 0.0)]:
    schedule = optimizer_lib.make_schedule(train_settings.OptimizerConfig(schedule=kind, **base))
    assert float(schedule(5)) == pytest.approx(0.5)
    assert float(schedule(60)) == pytest.approx(at_60, abs=1e-6)
    assert float(schedule(110)) == pytest.approx(at_110, abs=1e-6)
  with pytest.raises(ValueError, match="unknown schedule 'step'"):
    optimizer_lib.make_schedule(train_settings.OptimizerConfig(schedule="step"))


def run_steps(mesh, accum_steps=1, steps=2):
  graphdef, params = nnx.split(create_model(CONFIG, seed=0))
  # A large Adam eps keeps updates smooth in the gradients: with eps ~ 0, Adam's first steps
  # are sign(g), which turns float reordering noise on near-zero gradients into lr-sized jumps.
  optimizer = optimizer_lib.make_optimizer(train_settings.OptimizerConfig(
      learning_rate=1e-2, eps=1e-3, weight_decay=0.01, total_steps=10))
  step_cfg = train_settings.StepConfig(train_settings.cod_counts(24, 4, 0.7, 0.2), mask_tokens=(5,) * 3)
  state, state_sharding = step_lib.create_sharded_state(params, optimizer, mesh)
  step = step_lib.jit_train_step(graphdef, optimizer, step_cfg, mesh, state_sharding, accum_steps)
  batch = packed_batch([[24], [10, 14], [24], [5, 19]] * 2, 24, seed=1, vocab=96)
  in_sharding = sharding.batch_sharding(mesh)
  for _ in range(steps):
    state, metrics = step(state, jax.device_put(batch, in_sharding), jax.random.key(3))
  return state, jax.device_get(metrics)


def frozen_run(tied: bool, frozen_head: bool):
  """(params before, after) 3 steps with the shared tensors frozen (mask token 5)."""
  model = create_model(CONFIG.replace(tie_word_embeddings=tied), seed=0)
  graphdef, params = nnx.split(model)
  optimizer = optimizer_lib.make_optimizer(train_settings.OptimizerConfig(
      learning_rate=1e-2, weight_decay=0.1, total_steps=10), trainable="layers", mask_tokens=(5,))
  step_cfg = train_settings.StepConfig(train_settings.cod_counts(24, 4, 0.7, 0.2), mask_tokens=(5,) * 3,
                                 frozen_head=frozen_head)
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  state, state_sharding = step_lib.create_sharded_state(params, optimizer, mesh)
  step = step_lib.jit_train_step(graphdef, optimizer, step_cfg, mesh, state_sharding)
  batch = packed_batch([[24], [10, 14]], 24, seed=1, vocab=96)
  for _ in range(3):
    state, _ = step(state, batch, jax.random.key(3))
  return jax.device_get(params), jax.device_get(state["params"])


@pytest.mark.parametrize("tied", [pytest.param(False, marks=pytest.mark.slow), True])
def test_frozen_shared_tensors_keep_their_values_but_the_mask_row(tied):
  before, after = frozen_run(tied, frozen_head=True)
  changed = lambda get: not np.array_equal(get(before), get(after))
  embedding = lambda p: p["embed_tokens"]["embedding"]
  assert not np.array_equal(embedding(before)[5], embedding(after)[5])  # the mask row learns
  np.testing.assert_array_equal(np.delete(embedding(before), 5, 0),
                                np.delete(embedding(after), 5, 0))
  assert not changed(lambda p: p["norm"]["weight"])
  assert tied or not changed(lambda p: p["lm_head"]["kernel"])
  assert changed(lambda p: p["layers"][1]["mlp"]["up_proj"]["kernel"])
  if not tied:  # skipping the frozen head's weight gradient changes nothing else
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 after, frozen_run(tied, frozen_head=False)[1])
  with pytest.raises(ValueError, match="unknown trainable 'heads'"):
    optimizer_lib.make_optimizer(train_settings.OptimizerConfig(), trainable="heads")


@pytest.mark.slow
def test_restricted_head_loss_is_cross_entropy_over_its_vocabulary():
  batch = packed_batch([[24], [24]], 24, seed=2, vocab=96)
  ids = packing.frequent_tokens(packing.PackedRows(**batch), 40, CONFIG.vocab_size)
  counts = np.bincount(batch["tokens"][batch["segment_ids"] > 0], minlength=96)
  assert len(ids) == 40 and min(counts[list(ids)]) >= max(np.delete(counts, ids))
  model = create_model(CONFIG, seed=0)
  full_logits, _ = model(batch["tokens"], batch["positions"])  # one depth, one doc a row
  model.config = CONFIG.replace(draft_vocab=ids)
  graphdef, params = nnx.split(model)
  keys = jax.random.split(jax.random.key(0), 2)
  step_cfg = train_settings.StepConfig(counts=(24,), mask_tokens=())
  loss, stats = losses.layout_loss(params, graphdef, batch, keys, step_cfg)

  logp = jax.nn.log_softmax(np.asarray(full_logits)[..., list(ids)], axis=-1)
  index = {t: i for i, t in enumerate(ids)}
  inside = np.vectorize(index.__contains__)(batch["labels"]) & (batch["weights"] > 0)
  picked = [-logp[r, s, index[batch["labels"][r, s]]] for r, s in zip(*np.nonzero(inside))]
  np.testing.assert_allclose(loss, np.sum(picked), rtol=1e-5)
  assert stats["count"][0] == inside.sum() < batch["weights"].sum()


@pytest.mark.slow
def test_kl_loss_matches_a_reference_computation():
  counts = train_settings.cod_counts(12, 3, 0.8, 0.3)
  batch = packed_batch([[12], [5, 7]], 12, seed=4, vocab=96)
  keys = jax.random.split(jax.random.key(2), 2)
  drafter, teacher = create_model(CONFIG, seed=0), create_model(CONFIG, seed=9)
  graphdef, params = nnx.split(drafter)
  teacher_graphdef, teacher_params = nnx.split(teacher)
  step_cfg = train_settings.StepConfig(counts, (90, 91), ce_weight=0.1, kl_weight=1.0)
  teacher_logits, _ = losses.teacher_outputs(teacher_params, teacher_graphdef, batch, step_cfg)
  loss, stats = losses.layout_loss(params, graphdef, batch, keys, step_cfg, teacher_logits)

  # Reference: each document on its own through the teacher; the layout through the drafter.
  out = jax.device_get(layout.build_layout(keys, batch, counts, (90, 91)))
  mask = layout.attention_mask(out["depths"], out["positions"], out["segment_ids"])
  q_logits = np.asarray(drafter(out["tokens"], out["positions"], attn_mask_BxSxT=mask)[0])
  p_logits = np.zeros((2, 12, CONFIG.vocab_size), np.float32)
  for b, start, end in [(0, 0, 12), (1, 0, 5), (1, 5, 12)]:
    doc = batch["tokens"][b, start:end][None]
    p_logits[b, start:end] = np.asarray(teacher(doc, np.arange(end - start)[None])[0])[0]
  b, s = np.nonzero(out["weights"])
  t = out["index"][b, s]
  log_p = scipy.special.log_softmax(p_logits[b, t], axis=-1)
  log_q = scipy.special.log_softmax(q_logits[b, s], axis=-1)
  kl = np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)
  nll = -log_q[np.arange(len(b)), batch["labels"][b, t]]
  expected = np.sum(0.1 * nll + kl)
  np.testing.assert_allclose(loss, expected, rtol=1e-4)
  assert stats["kl"].shape == (3,) and np.all(stats["kl"] > 0)


@pytest.mark.slow
def test_cat_weighting_weighs_each_slot_by_the_teachers_probability_of_its_chain():
  """PARD-2's CAT: a depth-k slot at row index i weighs prod_{t=i-k}^{i-1} p_teacher(label_t)."""
  counts = train_settings.cod_counts(12, 3, 0.8, 0.3)
  batch = packed_batch([[12], [5, 7]], 12, seed=4, vocab=96)
  keys = jax.random.split(jax.random.key(2), 2)
  drafter = create_model(CONFIG, seed=0)
  graphdef, params = nnx.split(drafter)
  teacher_logits = 3 * jax.random.normal(jax.random.key(8), (2, 12, CONFIG.vocab_size))
  step_cfg = train_settings.StepConfig(counts, (90, 91), cat_weighting=True)
  loss, _ = losses.layout_loss(params, graphdef, batch, keys, step_cfg, teacher_logits)

  out = jax.device_get(layout.build_layout(keys, batch, counts, (90, 91)))
  mask = layout.attention_mask(out["depths"], out["positions"], out["segment_ids"])
  log_q = scipy.special.log_softmax(
      np.asarray(drafter(out["tokens"], out["positions"], attn_mask_BxSxT=mask)[0]), axis=-1)
  p_label = np.take_along_axis(scipy.special.softmax(np.asarray(teacher_logits), axis=-1),
                               batch["labels"][..., None], axis=-1)[..., 0]
  expected, deep = 0.0, 0
  for b, s in zip(*np.nonzero(out["weights"])):
    i, k = out["index"][b, s], out["depths"][b, s]
    weight = np.prod(p_label[b, i - k:i])
    expected += out["weights"][b, s] * weight * -log_q[b, s, batch["labels"][b, i]]
    deep += k > 0
  assert deep >= 8
  np.testing.assert_allclose(loss, expected, rtol=1e-4)
  plain, _ = losses.layout_loss(params, graphdef, batch, keys,
                                  train_settings.StepConfig(counts, (90, 91)), teacher_logits)
  assert plain > 1.2 * loss  # deeper slots weigh less


@pytest.mark.slow
def test_sharded_step_matches_single_device():
  single, single_metrics = run_steps(sharding.make_mesh((1, 1, 1), jax.devices()[:1]))
  sharded, sharded_metrics = run_steps(sharding.make_mesh((2, 2, 2)))
  kernel = sharded["params"]["layers"][0]["mlp"]["up_proj"]["kernel"]
  assert kernel.sharding.spec == P("fsdp", "tensor")
  assert len(kernel.addressable_shards) == 8
  assert sharded["opt_state"][1][0].mu["layers"][0]["mlp"]["up_proj"]["kernel"].sharding.spec \
      == P("fsdp", "tensor")
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
               jax.device_get(single), jax.device_get(sharded))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5),
               single_metrics, sharded_metrics)
  assert int(single["step"]) == 2 and single_metrics["tokens_per_depth"][0] > 0


@pytest.mark.slow
def test_gradient_accumulation_matches_full_batch():
  mesh = sharding.make_mesh((2, 1, 1), jax.devices()[:2])
  full, full_metrics = run_steps(mesh, accum_steps=1, steps=1)
  accumulated, acc_metrics = run_steps(mesh, accum_steps=4, steps=1)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
               jax.device_get(full["params"]), jax.device_get(accumulated["params"]))
  np.testing.assert_allclose(full_metrics["loss"], acc_metrics["loss"], rtol=1e-5)


@pytest.mark.parametrize("field, value, message", [
    ("drafter.num_draft_tokens", 0, "config.drafter.num_draft_tokens"),
    ("drafter.num_draft_tokens", 65, "config.drafter.num_draft_tokens: must be an integer in "
     r"\[1, 64\]"),
    ("drafter.r", 0.0, "config.drafter.r:"),
    ("drafter.r", 1.5, "config.drafter.r:"),
    ("drafter.r_min", 1.2, "config.drafter.r_min"),
    ("drafter.mask_token_ids", (-1,), "config.drafter.mask_token_ids"),
    ("drafter.mask_token_ids", (4, 5), "config.drafter.mask_token_ids: pard needs one"),
    ("data.length", 3, "config.data.length"),
    ("data.source", "", "config.data.source"),
    ("train.schedule", "step", "config.train.schedule"),
    ("train.trainable", "heads", "config.train.trainable: unknown value 'heads'"),
    ("model.keep_layers", (0, 1), "config.model.keep_layers: cuts the layers of model.init"),
    ("model.identity_layers", (1, 1), "config.model.identity_layers: must be distinct"),
    ("model.identity_layers", (0,), r"config.model.identity_layers: \[0\]: each must be the "
     r"later copy .* it zeroes a trained layer"),
    ("drafter.feature_dropout", 0.1, "config.drafter.feature_dropout: .* only a drafter with "
     "drafter.feature_layers reads"),
    ("train.grad_accum_steps", 3, "config.train.grad_accum_steps"),
    ("train.learning_rate", 0.0, "config.train.learning_rate"),
    ("model.dtype", "int8", "config.model.dtype"),
    ("model.draft_vocab_size", -1, "config.model.draft_vocab_size"),
    ("drafter.method", "medusa", "config.drafter.method: unknown method 'medusa'"),
    ("loss.kl_weight", -1.0, "config.loss: ce_weight and kl_weight must be >= 0"),
    ("loss.cat_weighting", None, "config.loss.cat_weighting: must be True or False"),
    ("drafter.feedback_gradient", None, "config.drafter.feedback_gradient: must be True or"),
    ("drafter.feedback_gradient", True, "config.drafter.feedback_gradient: applies to the "
     "autoregressive feature peer only"),
    ("tokenizer", "/no/such/tokenizer", "config.tokenizer"),
    ("model.init", "/no/such/model", "config.model.init"),
])
def test_bad_config_values_name_the_field(field, value, message):
  config = tiny_train_config()
  section, _, name = field.rpartition(".")
  (config[section] if section else config)[name] = value
  with pytest.raises(ConfigError, match=message):
    TrainSpec.from_config(config)


def test_parallelspec_and_kl_settings_are_checked():
  config = tiny_train_config()
  config.drafter.method = "parallelspec"
  config.drafter.mask_token_ids = (5, 5, 6)
  with pytest.raises(ConfigError, match="config.drafter.mask_token_ids: must be 3 distinct"):
    TrainSpec.from_config(config)
  config = tiny_train_config()
  config.loss.update(dict(kl_weight=1.0, teacher="/no/such/teacher"))
  with pytest.raises(ConfigError, match="config.loss.teacher: '/no/such/teacher'"):
    TrainSpec.from_config(config)
  config.loss.teacher = ""  # a from-scratch model has no model.init to fall back on
  with pytest.raises(ConfigError, match="config.loss.teacher: is required"):
    TrainSpec.from_config(config)


@pytest.mark.parametrize("settings, message", [
    (dict(feature_layers=(1, 1)), "config.drafter.feature_layers: must be distinct layer indices"),
    (dict(feature_layers=(0,), feature_dropout=1.0),
     r"config.drafter.feature_dropout: must be in \[0, 1\)"),
    (dict(method="sd"), "config.drafter.method: unknown method 'sd'.*sd with drafter.feature_"),
    (dict(method="sd", feature_layers=(0,), mask_token_ids=(4,)),
     "config.drafter.mask_token_ids: sd feeds no mask tokens"),
    (dict(feature_layers=(0,)), "config.loss.teacher: is required for kl_weight > 0, "
     "cat_weighting or drafter.feature_layers"),
])
def test_feature_drafter_settings_are_checked(settings, message):
  config = tiny_train_config()
  config.drafter.update(settings)
  with pytest.raises(ConfigError, match=message):
    TrainSpec.from_config(config)


def test_feature_layers_outside_the_teacher_are_named_before_loading(tmp_path):
  checkpoints.save_hf(create_model(CONFIG), tmp_path / "target")
  config = tiny_train_config()
  config.model.init = str(tmp_path / "target")
  config.drafter.feature_layers = (0, CONFIG.num_layers)
  spec = TrainSpec.from_config(config)
  with pytest.raises(ConfigError, match=r"config.drafter.feature_layers: \[0, 2\] must be "
                     r"layer indices of the teacher"):
    spec.check_model(checkpoints.read_config(tmp_path / "target").model)


@pytest.mark.real_model
@pytest.mark.parametrize("settings", [dict(kl_weight=1.0), dict(cat_weighting=True)])
def test_a_teacher_of_another_tokenizer_is_refused_before_loading(settings, tmp_path,
                                                                   no_model_loading):
  checkpoints.save_hf(create_model(CONFIG), tmp_path / "drafter")  # the tiny tokenizer's
  config = tiny_train_config(num_steps=2)
  config.model.init = str(tmp_path / "drafter")
  config.loss.update(dict(teacher=assets.SMOLLM2_GGUF, **settings))
  with pytest.raises(ConfigError, match=r"config.loss.teacher: .*SmolLM2.*tokenizer is not the "
                     r"drafter's"):
    loop.train(config, str(tmp_path / "run"))


def test_feature_layers_naming_one_layer_twice_are_named_before_loading(tmp_path):
  checkpoints.save_hf(create_model(CONFIG), tmp_path / "target")  # 2 layers: 1 and -1 coincide
  config = tiny_train_config()
  config.model.init = str(tmp_path / "target")
  config.drafter.feature_layers = (1, -1)
  spec = TrainSpec.from_config(config)
  with pytest.raises(ConfigError, match=r"config.drafter.feature_layers: \[1, -1\] names a "
                     r"layer twice .* \[1, 1\]"):
    spec.check_model(checkpoints.read_config(tmp_path / "target").model)


def test_an_autoregressive_peer_narrower_than_its_teacher_is_named_before_loading(tmp_path):
  checkpoints.save_hf(create_model(CONFIG), tmp_path / "target")
  config = tiny_train_config()
  config.model.init = str(tmp_path / "target")
  config.drafter.update(dict(method="sd", mask_token_ids=(), feature_layers=(0,)))
  spec = TrainSpec.from_config(config)
  spec.check_model(CONFIG)
  with pytest.raises(ConfigError, match=r"config.drafter.method: sd with features: the "
                     r"autoregressive feature peer feeds its own hidden state .* its width is 32 "
                     r"and the target's 64"):
    spec.check_model(CONFIG.replace(hidden_size=32, head_dim=8))


def test_batch_must_divide_data_parallel_mesh():
  config = tiny_train_config(batch_size=6)
  with pytest.raises(ConfigError, match="config.train.batch_size.*mesh size 4"):
    TrainSpec.from_config(config).check_mesh(sharding.make_mesh((2, 2, 2)))
  config.model.arch = {}
  with pytest.raises(ConfigError, match="config.model.init: is required"):
    TrainSpec.from_config(config)


def tiny_data():
  """`data/make_tiny_data.py`, which writes the tiny corpus, as a module."""
  spec = importlib.util.spec_from_file_location("make_tiny_data", ROOT / "data/make_tiny_data.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
def test_tiny_run_learns_and_exports(tmp_path):
  config = tiny_train_config(num_steps=40, log_every=10, checkpoint_every=20)
  heldout_rows = tmp_path / "heldout" / "chat.jsonl"  # conversations the corpus does not hold
  heldout_rows.parent.mkdir()
  corpus = set((ROOT / "data/tiny_chat.jsonl").read_text().splitlines())
  heldout_rows.write_text("".join(itertools.islice(
      (line + "\n" for line in map(json.dumps, tiny_data().conversations(seed=1))
       if line not in corpus), 60)))
  config.heldout.update(dict(source=str(heldout_rows), max_rows=8))
  history = loop.train(config, str(tmp_path))
  losses = [r["loss"] for r in history]
  assert len(losses) == 4 and losses[-1] < losses[0] - 1.0
  assert history[-1]["accuracy/depth_1"] > 0.05  # 25x chance (1/512)
  assert [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")] == \
      [10, 20, 30, 40]
  events = b"".join(p.read_bytes() for p in (tmp_path / "tensorboard").glob("events.out.*"))
  assert b"accuracy/depth_1" in events and b"loss" in events and b"heldout/tau" in events
  # Greedy acceptance on the held-out rows, at each checkpoint (`test_heldout`: it is the loop's).
  records = [json.loads(line) for line in open(tmp_path / "heldout.jsonl")]
  assert [r["step"] for r in records] == [20, 40]
  for r in records:
    assert r["anchors"] > 100 and r["tau"] == pytest.approx(1 + sum(r["accepted"]))
    assert r["accepted"] == sorted(r["accepted"], reverse=True)
    assert r["accepted"][0] == pytest.approx(r["accuracy"][0])
  assert records[-1]["tau"] > max(records[0]["tau"], 1.2), records
  hf = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert hf["pard_token"] == 4 and hf["spd_type"] == "pard"
  assert checkpoints.read_config(tmp_path / "hf").drafter == kinds.PardDrafter(4)
  tokenizer = checkpoints.load_tokenizer(tmp_path / "hf")
  assert tokenizer.convert_ids_to_tokens(4) == "<|mask|>"

  # The export is directly a decode.py drafter; as its own target (a PARD checkpoint is still an
  # AR model) its mask-token drafts must already be accepted well above chance.
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text('{"prompt": "Spell the word river."}\n{"prompt": "What color is the sky?"}\n')
  decode = load_config("configs/decode.py")
  decode.update(dict(target=str(tmp_path / "hf"), drafter=str(tmp_path / "hf"), method="pard",
                     num_draft_tokens=(4,), prompts=str(prompts), max_new_tokens=24,
                     verify_threshold=0.0))  # τ of the drafter itself: every draft verified
  result = job.run(decode)
  pard = result.cell("prompts", "pard", 4)
  assert pard.identical_to_ar == 2 and pard.tau > 1.5, pard
  assert result.records[0]["text"]


@pytest.mark.slow
def test_tiny_parallelspec_run_exports_a_drafter_decode_py_uses(tmp_path):
  config = load_config("configs/tiny_parallelspec.py")
  config.train.update(dict(num_steps=40, log_every=20, checkpoint_every=40))
  history = loop.train(config, str(tmp_path))
  assert history[-1]["accuracy/depth_1"] > 0.05
  hf = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert hf["spd_type"] == "parallelspec" and hf["parallelspec_tokens"] == [512, 513, 514]
  assert hf["vocab_size"] == 515 and "pard_token" not in hf
  assert transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").config.vocab_size \
      == 515

  decode = load_config("configs/decode.py")
  decode.update(dict(target=str(tmp_path / "hf"), drafter=str(tmp_path / "hf"),
                     method="parallelspec", num_draft_tokens=(4,), max_new_tokens=24,
                     prompts=str(ROOT / "data/prompts/chat.jsonl"), max_prompts=2,
                     verify_threshold=0.0))
  cell = job.run(decode).cell("chat", "parallelspec", 4)
  assert cell.identical_to_ar == 2 and cell.tau > 1.2, cell


@pytest.mark.slow
def test_identity_layers_grow_a_drafter_that_drafts_as_before(tmp_path):
  """keep_layers=(0, 0) with identity_layers=(1,): two layers whose logits are the one-layer
  cut's, the new layer still learning (its zeroed projections get gradients); its delta over
  the original base loads as the grown model."""
  checkpoints.save_hf(create_model(TrainSpec.from_config(tiny_train_config()).model.arch, 3),
                      tmp_path / "base")
  config = tiny_train_config()
  config.model.update(dict(init=str(tmp_path / "base"), keep_layers=(0, 0),
                           identity_layers=(1,)))
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  grown = loop.init_model(TrainSpec.from_config(config), mesh)
  one = checkpoints.load_model(tmp_path / "base", keep_layers=(0,))
  tokens = jnp.arange(12)[None] % one.config.vocab_size
  positions = jnp.arange(12)[None]
  np.testing.assert_allclose(grown(tokens, positions)[0], one(tokens, positions)[0], atol=1e-5)
  graphdef, params = nnx.split(grown)
  grads = jax.grad(lambda p: nnx.merge(graphdef, p)(tokens, positions)[0][0, :, 0].sum())(params)
  assert float(jnp.abs(grads["layers"][1]["mlp"]["down_proj"]["kernel"][...]).max()) > 0
  checkpoints.save_delta(grown, tmp_path / "delta", tmp_path / "base", keep_layers=(0, 0),
                         dtype="float32")
  np.testing.assert_allclose(checkpoints.load_model(tmp_path / "delta")(tokens, positions)[0],
                             grown(tokens, positions)[0], atol=1e-5)
  config.model.identity_layers = (2,)
  with pytest.raises(ConfigError, match=r"config.model.identity_layers: \[2\] must be layer "
                     r"indices in \[0, 2\) of the drafter as cut"):
    loop.init_model(TrainSpec.from_config(config), mesh)


@pytest.mark.slow
def test_tiny_feature_drafter_trains_with_its_target_online_and_decodes(tmp_path):
  """PARD-2 in small: a 1-layer cut reading two target layers, CE + KL with the target online,
  feature dropout; exported as a delta whose metadata is all decode.py needs."""
  loop.train(tiny_train_config(num_steps=30, log_every=10, checkpoint_every=30),
             str(tmp_path / "target"))
  target = tmp_path / "target" / "hf"
  config = tiny_train_config(num_steps=20, log_every=10, checkpoint_every=20)
  config.model.init = str(target)
  config.model.keep_layers = (0,)
  config.drafter.feature_layers = (0, -1)
  config.drafter.feature_dropout = 0.2
  config.loss.update(dict(ce_weight=0.1, kl_weight=1.0))
  config.train.trainable = "layers"
  history = loop.train(config, str(tmp_path / "drafter"))
  assert history[-1]["loss"] < history[0]["loss"]
  delta = checkpoints.read_config(tmp_path / "drafter" / "delta")
  assert delta.drafter == kinds.PardDrafter(4, (0, -1))
  assert (delta.model.feature_size, delta.model.num_feature_layers) == (128, 2)
  drafter = checkpoints.load_model(tmp_path / "drafter" / "delta")
  assert float(jnp.abs(drafter.features.feature_proj.kernel[...]).max()) > 0  # it learned
  # transformers loads the body (and leaves the feature input, which it does not know, aside).
  body = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "drafter" / "hf")
  assert body.config.num_hidden_layers == 1

  decode = load_config("configs/decode.py")
  decode.update(dict(target=str(target), drafter=str(tmp_path / "drafter" / "delta"),
                     method="pard", num_draft_tokens=(4,), max_new_tokens=16,
                     prompts=str(ROOT / "data/prompts/chat.jsonl"), max_prompts=2))
  cell = job.run(decode).cell("chat", "pard", 4)
  assert cell.identical_to_ar == 2, cell

  # Trained on from its delta, with a second source: the new delta is over the same target.
  more = tmp_path / "more.jsonl"
  more.write_text(json.dumps({"text": "Plain text is data too, with KL to the target."}) + "\n")
  config.model.update(dict(init=str(tmp_path / "drafter" / "delta"), keep_layers=()))
  config.loss.teacher = str(target)
  config.data.source = f"{config.data.source},{more}"
  config.train.update(dict(num_steps=2, log_every=1, checkpoint_every=2, learning_rate=1e-9))
  loop.train(config, str(tmp_path / "more"))
  delta = checkpoints.read_config(tmp_path / "more" / "delta").delta
  assert pathlib.Path(delta.base).resolve() == target.resolve() and delta.keep_layers == (0,)
  more = checkpoints.load_model(tmp_path / "more" / "delta")  # it started as the drafter
  np.testing.assert_allclose(more.features.feature_proj.kernel[...],
                             drafter.features.feature_proj.kernel[...], atol=1e-3)


@pytest.mark.slow  # the fast subset keeps the nan checks of test_train_inputs.py
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  # Diverges at step 5 (a nan gradient); 1e30 diverged at step 2, before any checkpoint.
  config = tiny_train_config(num_steps=30, checkpoint_every=2, learning_rate=1e4)
  with pytest.raises(FloatingPointError,
                     match=r"(loss|grad_norm) is (nan|inf|-inf) at step (\d+)") as err:
    loop.train(config, str(tmp_path))
  bad_step = int(err.value.args[0].split(" at step ")[1].split(":")[0])
  manager = checkpointing.checkpoint_manager(tmp_path, config.train.max_checkpoints)
  assert manager.latest_step() is not None and manager.latest_step() < bad_step
  assert not (tmp_path / "hf").exists()
