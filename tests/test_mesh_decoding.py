"""Decoding over a device mesh (8 host CPU devices, tests/conftest.py): the same tokens as one
device for every drafter kind, the target distribution kept when sampling, weights split as the
rules say, no weight gathered inside the loop, the program exportable for GPU and TPU, bad
meshes refused before any weight is read, and two processes decoding as one."""

import functools
import json
import os
import socket
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import export
from jax.sharding import NamedSharding, PartitionSpec as P

from pard_jax import checkpoints, decoding, hlo, packed_dense, sharding
from pard_jax import drafter_kinds as kinds
from pard_jax.config import ModelConfig
from pard_jax.decoding import DecodeConfig, DecodeError, SpeculativeDecoder
from pard_jax.errors import ConfigError
from pard_jax.eval import job
from pard_jax.model import create_model
from pard_jax.train import optimizer as optimizer_lib
from pard_jax.train import settings as train_settings
from pard_jax.train import step as step_lib
from tests.hf_helpers import save_hf_model, save_target_and_pard_drafter
from tests.helpers import (ROOT, chi_square_pvalue, exact_distribution, feature_drafter,
                           load_config, packed_batch, perturbed)

# 8 query / 4 key-value heads: attention splits over tensor = 2 and 4, is replicated at 8.
TARGET = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                     num_heads=8, num_kv_heads=4, head_dim=8, max_position_embeddings=64)
MASKS = (61, 62, 63)
LAYERS = (0, -1)
KINDS = {"ar": kinds.NoDrafter(), "sd": kinds.AutoregressiveDrafter(),
         "pard": kinds.PardDrafter(MASKS[0]), "parallelspec": kinds.ParallelSpecDrafter(MASKS),
         "feature": kinds.PardDrafter(MASKS[0], LAYERS)}
PROMPTS = [[1, 2, 3, 4, 5], [6], [7, 8], [9, 10, 11, 12]]  # ragged, one row per data shard
MESHES = [(1, 1, 2), (1, 1, 4), (1, 1, 8), (2, 1, 4)]
SLOW = pytest.mark.slow


def mesh_of(shape):
  return sharding.make_mesh(shape, jax.devices()[:int(np.prod(shape))])


@functools.lru_cache(maxsize=None)
def models(method):
  target = create_model(TARGET, 0)
  if method == "ar":
    return target, None
  if method == "feature":
    return target, feature_drafter(target, LAYERS, num_layers=1, seed=1)
  return target, perturbed(target, 0.3, 1)  # accepts some drafts, rejects others


def generate(method, mesh, **settings):
  target, drafter = models(method)
  cfg = DecodeConfig(drafter_kind=KINDS[method], num_draft_tokens=3, max_new_tokens=12, **settings)
  return SpeculativeDecoder(target, drafter, cfg, mesh=mesh).generate(PROMPTS, seed=3)


@pytest.mark.parametrize("method, shape", [
    (m, s) if (m, s) == ("pard", (2, 1, 4)) else pytest.param(m, s, marks=SLOW)
    for m in KINDS for s in MESHES])
def test_greedy_over_a_mesh_equals_one_device(method, shape):
  one = generate(method, None)
  over = generate(method, mesh_of(shape))
  assert over.output_ids == one.output_ids
  assert over.accept_lengths == one.accept_lengths
  if method != "ar":  # the rows accept differently: the carry's per-row state is exercised
    assert len({tuple(a) for a in one.accept_lengths}) > 1


@SLOW
@pytest.mark.parametrize("method", ["pard", "sd"])
def test_sampling_over_a_mesh_keeps_the_target_distribution(method):
  """The chi-square of test_decoding, decoded over data 2 x tensor 4."""
  target = create_model(TARGET.replace(vocab_size=8, intermediate_size=32), 0)
  target.lm_head.kernel[...] = target.lm_head.kernel[...] * 30  # a peaked, testable law
  drafter = perturbed(target, 0.5, 1)
  cfg = DecodeConfig(drafter_kind=kinds.for_method(method, override=(7,) if method == "pard" else ()),
                     num_draft_tokens=2, max_new_tokens=2, temperature=1.0)
  prompt = [1, 3]
  result = SpeculativeDecoder(target, drafter, cfg, mesh=mesh_of((2, 1, 4))).generate(
      [prompt] * 2000, seed=5)
  assert chi_square_pvalue(np.asarray(result.output_ids),
                           exact_distribution(target, prompt, 2)) > 1e-3


def _device_bytes(array) -> int:
  return array.addressable_shards[0].data.nbytes


@pytest.mark.parametrize("tensor", [2, pytest.param(8, marks=SLOW)])
def test_each_device_holds_its_share_of_the_dense_weights(tensor):
  target, _ = models("ar")
  decoder = SpeculativeDecoder(target, None, DecodeConfig(), mesh=mesh_of((1, 1, tensor)))
  params = decoder.target_params
  for layer in params["layers"].values():
    dense = [layer["mlp"][name]["kernel"] for name in ("gate_proj", "up_proj", "down_proj")]
    attention = [layer["self_attn"][f"{n}_proj"]["kernel"] for n in "qkvo"]
    # 4 key/value heads split over 2 devices; over 8 they cannot: attention is replicated.
    heads_split = TARGET.num_kv_heads % tensor == 0
    for kernel in dense + attention * heads_split:
      assert _device_bytes(kernel[...]) == pytest.approx(kernel[...].nbytes / tensor, rel=0.05)
    for kernel in attention * (not heads_split):
      assert _device_bytes(kernel[...]) == kernel[...].nbytes
  embedding = params["embed_tokens"]["embedding"][...]
  assert _device_bytes(embedding) == embedding.nbytes // tensor


def _weight_shapes(params) -> set[tuple[int, ...]]:
  return {tuple(leaf.shape) for leaf in jax.tree.leaves(params) if leaf.ndim == 2}


def _compiled_text(method, shape, verify_threshold=0.0):
  target, drafter = models(method)
  cfg = DecodeConfig(drafter_kind=KINDS[method], num_draft_tokens=3, max_new_tokens=12,
                     verify_threshold=verify_threshold)
  decoder = SpeculativeDecoder(target, drafter, cfg, mesh=mesh_of(shape))
  params = [decoder.target_params] + [decoder.drafter_params] * (drafter is not None)
  return decoder.lower(4, 5).compile().as_text(), params, drafter


def _all_reduce_bound(method, drafter) -> int:
  """Each forward of an L-layer model all-reduces twice per layer (attention out and MLP down
  projections: their inputs are split over tensor), once for the vocabulary-split embedding
  lookup and twice for a softmax over vocabulary-split logits (max and sum: the drafter's
  confidences). An iteration runs the target once, an autoregressive drafter K = 3 times, a
  parallel one once."""
  forwards = 3 if method == "sd" else 1 if drafter is not None else 0
  return (2 * TARGET.num_layers + 3) + forwards * (
      2 * (drafter.config.num_layers if forwards else 0) + 3)


@pytest.mark.parametrize("method, shape, verify_threshold", [
    ("sd", (1, 1, 4), 0.3), pytest.param("pard", (2, 1, 4), 0.3, marks=SLOW),
    pytest.param("ar", (1, 1, 4), 0.0, marks=SLOW),
    pytest.param("parallelspec", (1, 1, 8), 0.0, marks=SLOW)])
def test_collectives_per_iteration_stay_within_the_megatron_bound(method, shape,
                                                                   verify_threshold):
  """All-reduces within `_all_reduce_bound`; no all-gather of a weight's full shape anywhere
  in the program (gathers over `data` move per-row tokens and new keys/values only)."""
  text, params, drafter = _compiled_text(method, shape, verify_threshold)
  counts = hlo.collectives_per_iteration(text)
  assert 0 < counts["all-reduce"] <= _all_reduce_bound(method, drafter), counts
  assert counts["all-to-all"] == counts["reduce-scatter"] == 0, counts
  gathered = hlo.all_gather_shapes(text)
  assert not gathered & set().union(*map(_weight_shapes, params)), gathered


@SLOW
def test_weights_split_the_training_way_break_the_bound(monkeypatch):
  """The bound can fail: weights split over fsdp (training's rules, data-parallel rows on the
  same axis) make every dense layer reduce its activations inside the loop."""
  monkeypatch.setattr(sharding, "decode_rules", lambda kv_heads, mesh: sharding.LLAMA_RULES)
  text, _, drafter = _compiled_text("pard", (1, 4, 1))
  assert hlo.collectives_per_iteration(text)["all-reduce"] > _all_reduce_bound("pard", drafter)


def test_a_gathered_weight_shows_with_its_full_shape():
  mesh = mesh_of((1, 1, 4))
  kernel = jax.device_put(jnp.ones((32, 64)), NamedSharding(mesh, P(None, "tensor")))
  gather = jax.jit(lambda w, x: x @ jax.lax.with_sharding_constraint(w, NamedSharding(mesh, P())))
  assert (32, 64) in hlo.all_gather_shapes(gather.lower(kernel, jnp.ones((2, 32))).compile()
                                           .as_text())


@SLOW
def test_the_loop_and_the_train_step_export_for_gpu_and_tpu():
  """`jax.export` lowers for platforms this machine does not have: no CPU-only custom call or
  host callback in the decoding loop over a mesh, nor in the sharded train step."""
  target, drafter = models("pard")
  mesh = mesh_of((2, 1, 4))
  cfg = DecodeConfig(drafter_kind=KINDS["pard"], num_draft_tokens=3, max_new_tokens=8,
                     verify_threshold=0.2, temperature=1.0, top_p=0.9)
  decoder = SpeculativeDecoder(target, drafter, cfg, mesh=mesh)
  loop = jax.jit(functools.partial(decoding.decode_loop, cfg, decoder.target_def,
                                   decoder.drafter_def, 5, mesh))
  exported = export.export(loop, platforms=("cuda", "tpu"))(
      decoder.target_params, decoder.drafter_params,
      decoder._abstract((4, 13)), decoder._abstract((4,)),  # pylint: disable=protected-access
      decoder._abstract(()))  # pylint: disable=protected-access
  assert exported.platforms == ("cuda", "tpu") and exported.nr_devices == 8

  graphdef, params = nnx.split(create_model(TARGET, 0))
  optimizer = optimizer_lib.make_optimizer(train_settings.OptimizerConfig(total_steps=10))
  step_cfg = train_settings.StepConfig(train_settings.cod_counts(24, 4, 0.7, 0.2), mask_tokens=(61,) * 3)
  state, state_sharding = step_lib.create_sharded_state(params, optimizer, mesh)
  step = step_lib.jit_train_step(graphdef, optimizer, step_cfg, mesh, state_sharding)
  batch = jax.device_put(packed_batch([[24], [10, 14]] * 2, 24, seed=1, vocab=60),
                         sharding.batch_sharding(mesh))
  exported = export.export(step, platforms=("cuda", "tpu"))(state, batch, jax.random.key(0))
  assert exported.nr_devices == 8


def test_the_packed_cpu_kernel_is_refused_over_a_mesh():
  if packed_dense.unavailable_reason("float32"):
    pytest.skip(packed_dense.unavailable_reason("float32"))
  target = packed_dense.pack(create_model(TARGET, 0))
  with pytest.raises(DecodeError, match="packed dense kernel runs on one CPU device.*'xla'"):
    SpeculativeDecoder(target, None, DecodeConfig(), mesh=mesh_of((1, 1, 2)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """A tiny HF target (4 heads, 2 key/value heads, MLP width 64) and a PARD drafter."""
  root = tmp_path_factory.mktemp("mesh_models")
  save_target_and_pard_drafter(root)
  (root / "prompts.jsonl").write_text("".join(
      json.dumps({"input_ids": ids}) + "\n" for ids in ([5, 6, 7], [9], [11, 12], [40, 41])))
  return root


def _decode_config(root, **overrides):
  config = load_config("configs/decode.py")
  config.update(dict(target=str(root / "target"), drafter=str(root / "drafter"),
                     prompts=str(root / "prompts.jsonl"), max_new_tokens=10, method="ar,pard",
                     max_prompts=0, stop_token_ids=(), verify_threshold=0.0, sd_drafter="",
                     batch_size=2, dense_kernel="xla"))
  config.update(overrides)
  return config


@SLOW
def test_decode_py_over_a_mesh_gives_the_one_device_outputs_and_reports_the_mesh(
    checkpoint, tmp_path):
  one = job.run(_decode_config(checkpoint))
  config = _decode_config(checkpoint, report_dir=str(tmp_path / "report"))
  config.mesh.shape = (2, 1, 2)
  over = job.run(config)
  assert [r["output_ids"] for r in over.records] == [r["output_ids"] for r in one.records]
  stored = json.loads((tmp_path / "report/results.json").read_text())
  assert stored["config"]["mesh"] == [2, 1, 2]
  assert stored["environment"]["num_devices"] == 8
  assert "- mesh (data, fsdp, tensor): (2, 1, 2)" in (tmp_path / "report/results.md").read_text()


@pytest.mark.parametrize("shape, overrides, message", [
    ((1, 1, 16), {}, r"config.mesh.shape: mesh \[1, 1, 16\] needs 16 devices, have 8"),
    ((1, 1, 3), {}, "config.mesh.shape: tensor=3 does not divide the target's MLP width"),
    ((4, 1, 1), {}, r"config.mesh.shape: \(4, 1, 1\) splits batch rows over data x fsdp = 4 "
     "devices, which does not divide config.batch_size=2"),
    ((1, 1, 0), {}, "config.mesh.shape: must be \\(data, fsdp, tensor\\)"),
    ((1, 1, 2), {"dense_kernel": "packed"}, "config.dense_kernel: 'packed' runs on one CPU "
     "device"),
])
def test_bad_meshes_are_refused_before_any_weight_is_read(checkpoint, no_model_loading, shape,
                                                          overrides, message):
  config = _decode_config(checkpoint, **overrides)
  config.mesh.shape = shape
  with pytest.raises(ConfigError, match=message):
    job.run(config)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@SLOW
def test_two_processes_decode_over_one_mesh_like_one(checkpoint, tmp_path):
  """jax.distributed on localhost: 2 processes x 4 CPU devices, mesh (2, 1, 4); each process
  writes the outputs, identical to one process's on one device."""
  port = _free_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  base = [f"--config.{k}={v}" for k, v in (
      ("target", checkpoint / "target"), ("drafter", checkpoint / "drafter"),
      ("prompts", checkpoint / "prompts.jsonl"), ("max_new_tokens", 10),
      ("method", "ar,pard"), ("max_prompts", 0), ("stop_token_ids", "()"),
      ("verify_threshold", 0.0), ("sd_drafter", ""), ("batch_size", 2),
      ("dense_kernel", "xla"), ("mesh.shape", "(2,1,4)"), ("distributed.num_processes", 2),
      ("distributed.coordinator_address", f"localhost:{port}"))]
  processes = [subprocess.Popen(
      [str(ROOT / ".venv/bin/python"), "decode.py", "--config=configs/decode.py", *base,
       f"--config.distributed.process_id={i}", f"--config.output={tmp_path / f'{i}.jsonl'}"],
      cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      for i in (0, 1)]
  errors = [p.communicate(timeout=300)[1] for p in processes]
  assert [p.returncode for p in processes] == [0, 0], errors[0][-3000:] + errors[1][-3000:]
  outputs = [[json.loads(line)["output_ids"] for line in (tmp_path / f"{i}.jsonl").open()]
             for i in (0, 1)]
  one = job.run(_decode_config(checkpoint))
  assert outputs[0] == outputs[1] == [r["output_ids"] for r in one.records]


@pytest.mark.parametrize("fmt", ["hf", "gguf", "delta"])
def test_each_format_reads_straight_into_its_shards(tmp_path, fmt):
  """HF safetensors, GGUF and a delta over a GGUF load onto a mesh by `decode_rules`, each
  tensor read into its shards, with the values of a one-device load."""
  from tests.test_checkpoints import _write_gguf  # pylint: disable=g-import-not-at-top
  hf = save_hf_model("smollm2", tmp_path / "hf")
  _write_gguf(hf, tmp_path / "tiny.gguf")
  path = {"hf": tmp_path / "hf", "gguf": tmp_path / "tiny.gguf", "delta": tmp_path / "delta"}[fmt]
  if fmt == "delta":
    drafter = checkpoints.load_model(tmp_path / "tiny.gguf")
    drafter.norm.weight[...] = drafter.norm.weight[...] + 1
    checkpoints.save_delta(drafter, path, tmp_path / "tiny.gguf")
  mesh = mesh_of((1, 1, 2))
  rules = sharding.decode_rules(checkpoints.read_config(path).model.num_kv_heads, mesh)
  sharded = nnx.state(checkpoints.load_model(path, mesh=mesh, rules=rules))
  expected = sharding.state_shardings(sharded, mesh, rules)
  one = nnx.state(checkpoints.load_model(path))
  for (name, leaf), want, ref in zip(jax.tree_util.tree_leaves_with_path(sharded),
                                     jax.tree.leaves(expected), jax.tree.leaves(one)):
    assert leaf.sharding == want, name
    np.testing.assert_array_equal(np.asarray(leaf), np.asarray(ref))
  mlp = sharded["layers"][0]["mlp"]["up_proj"]["kernel"][...]
  assert _device_bytes(mlp) == mlp.nbytes // 2
