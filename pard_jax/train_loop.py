"""The PARD training run: config -> data, model, sharded state -> steps, logs, checkpoints, export.

`workdir` holds `checkpoints/` (orbax: train state + data position), `metrics.jsonl`,
`tensorboard/` and, at the end, `hf/`: a Hugging Face directory with `"pard_token"` and
`"spd_type": "pard"` in its `config.json`, usable as a drafter (and `delta/`, the same drafter
stored as its difference from `model.init`, when only the layers trained). A run restarted on the same workdir resumes from the latest
checkpoint and continues exactly as if it had not stopped.
"""

from __future__ import annotations

import json
import logging as std_logging
import math
import pathlib
import time
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
import tensorboardX
from absl import logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pard_jax import checkpoints
from pard_jax import data as data_lib
from pard_jax import layout as layout_lib
from pard_jax import sharding as sharding_lib
from pard_jax import training
from pard_jax.config import DTYPES, ModelConfig
from pard_jax.model import create_model, grow_vocab


class TrainConfigError(ValueError):
  """A training config value is invalid; the message names the field."""


class _WarningsOnlyFromOrbax(std_logging.Filter):

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def quiet_orbax_logs() -> None:
  """Keeps INFO logs readable: orbax logs several INFO lines per checkpoint."""
  logging.get_absl_handler().addFilter(_WarningsOnlyFromOrbax())


def default_config() -> ml_collections.ConfigDict:
  """Every training field with its default; `configs/*.py` override what they need."""
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(
      init="",  # HF directory or .gguf file of the AR model the drafter starts from
      # Cut `init` to these decoder layers, in order (a drafter from its own target); () = all.
      keep_layers=(),
      # > 0: restrict the drafter's head to the data's most frequent tokens (saved as
      # `draft_vocab` in config.json); cheaper steps and drafts, still exact. 0 = whole vocab.
      draft_vocab_size=0,
      # ModelConfig fields for a from-scratch model, used only when `init` is empty.
      arch=ml_collections.ConfigDict(),
      dtype="bfloat16",  # compute dtype
      param_dtype="float32",  # storage dtype of parameters and optimizer moments
      seed=0,  # init seed of a from-scratch model
  ))
  c.tokenizer = ""  # defaults to model.init
  c.data = ml_collections.ConfigDict(dict(
      source="",  # jsonl/json/parquet path, hub dataset name or tfds:NAME
      split="train",
      assistant_only_loss=True,
      length=512,  # packed row length L (real tokens per row)
      seed=0,  # packing order and per-epoch shuffles
  ))
  c.pard = ml_collections.ConfigDict(dict(
      num_depths=8,  # K
      # "pard": one shared mask token (`mask_token`); "parallelspec": K-1 distinct ones
      # (`mask_tokens`, or, when empty, K-1 new embedding rows past the model's vocabulary).
      drafter="pard",
      mask_token=-1,
      mask_tokens=(),
      r=0.7,
      r_min=0.2,
  ))
  c.loss = ml_collections.ConfigDict(dict(
      ce_weight=1.0,  # cross-entropy on the data
      kl_weight=0.0,  # KL(teacher || drafter) per slot (PARD-2: ce 0.1, kl 1.0)
      teacher="",  # HF directory or .gguf of the teacher (the target); "" = model.init, uncut
  ))
  c.train = ml_collections.ConfigDict(dict(
      batch_size=8,  # global rows per optimizer step
      grad_accum_steps=1,
      num_epochs=4.0,
      num_steps=0,  # > 0 overrides num_epochs
      learning_rate=1e-5,
      schedule="constant",
      warmup_steps=0,
      weight_decay=0.0,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      max_grad_norm=1.0,
      # "all", or "layers": only the decoder layers and the mask token's embedding row learn.
      trainable="all",
      seed=0,  # COD sampling
      log_every=10,
      checkpoint_every=500,
      max_checkpoints=3,
  ))
  c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1)))  # (data, fsdp, tensor)
  c.distributed = ml_collections.ConfigDict(dict(
      coordinator_address="",  # host:port of process 0; set with num_processes > 1
      num_processes=1,
      process_id=0,
  ))
  return c


def _require(ok: bool, field: str, message: str) -> None:
  if not ok:
    raise TrainConfigError(f"config.{field}: {message}")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks every value that does not need the model, data or devices."""
  pard, train, data = config.pard, config.train, config.data
  _require(isinstance(pard.num_depths, int) and pard.num_depths >= 1, "pard.num_depths",
           f"must be an integer >= 1, got {pard.num_depths!r}")
  _require(0.0 < pard.r <= 1.0, "pard.r", f"must be in (0, 1], got {pard.r}")
  _require(0.0 <= pard.r_min <= 1.0, "pard.r_min", f"must be in [0, 1], got {pard.r_min}")
  _require(pard.drafter in DRAFTERS, "pard.drafter",
           f"unknown drafter {pard.drafter!r}; choose from {', '.join(DRAFTERS)}")
  if pard.drafter == "pard":
    _require(isinstance(pard.mask_token, int) and pard.mask_token >= 0, "pard.mask_token",
             f"must be a vocabulary id >= 0, got {pard.mask_token!r}")
  else:
    ids = tuple(pard.mask_tokens)
    _require(not ids or (len(ids) == pard.num_depths - 1 and len(set(ids)) == len(ids)
                         and all(isinstance(i, int) and i >= 0 for i in ids)),
             "pard.mask_tokens", f"must be {pard.num_depths - 1} distinct ids >= 0 (one per "
             f"depth 1..K-1), or empty to append new rows; got {ids}")
  loss = config.loss
  _require(loss.ce_weight >= 0 and loss.kl_weight >= 0 and loss.ce_weight + loss.kl_weight > 0,
           "loss", f"ce_weight and kl_weight must be >= 0 and not both 0, got "
           f"{loss.ce_weight}, {loss.kl_weight}")
  if loss.kl_weight > 0:
    teacher = loss.teacher or config.model.init
    _require(bool(teacher), "loss.teacher", "is required for kl_weight > 0 when model.init is "
             "empty (a HF directory or .gguf of the target)")
    _require(pathlib.Path(teacher).expanduser().exists(), "loss.teacher",
             f"{teacher!r} does not exist")
  _require(data.length >= pard.num_depths, "data.length",
           f"({data.length}) must be >= pard.num_depths ({pard.num_depths})")
  counts = layout_lib.cod_counts(data.length, pard.num_depths, pard.r, pard.r_min)
  _require(min(counts) >= 1, "data.length",
           f"{data.length} is too short for pard.r={pard.r}, pard.r_min={pard.r_min}: "
           f"COD keeps {counts} slots per depth")
  _require(bool(data.source), "data.source", "is required (jsonl/json/parquet path, hub "
           "dataset name or tfds:NAME)")
  _require(train.batch_size >= 1, "train.batch_size", f"must be >= 1, got {train.batch_size}")
  _require(train.grad_accum_steps >= 1 and train.batch_size % train.grad_accum_steps == 0,
           "train.grad_accum_steps", f"({train.grad_accum_steps}) must be >= 1 and divide "
           f"train.batch_size ({train.batch_size})")
  _require(train.trainable in training.TRAINABLE, "train.trainable",
           f"unknown value {train.trainable!r}; known: {training.TRAINABLE}")
  _require(not config.model.keep_layers or bool(config.model.init), "model.keep_layers",
           "cuts the layers of model.init, which is empty")
  _require(train.schedule in training.SCHEDULES, "train.schedule",
           f"unknown schedule {train.schedule!r}; known: {training.SCHEDULES}")
  _require(train.learning_rate > 0, "train.learning_rate",
           f"must be > 0, got {train.learning_rate}")
  _require(train.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {train.warmup_steps}")
  _require(train.num_steps > 0 or train.num_epochs > 0, "train.num_epochs",
           "must be > 0 unless train.num_steps > 0")
  for field in ("log_every", "checkpoint_every", "max_checkpoints"):
    _require(train[field] >= 1, f"train.{field}", f"must be >= 1, got {train[field]}")
  for field in ("dtype", "param_dtype"):
    _require(config.model[field] in DTYPES, f"model.{field}",
             f"must be one of {DTYPES}, got {config.model[field]!r}")
  _require(isinstance(config.model.draft_vocab_size, int) and config.model.draft_vocab_size >= 0,
           "model.draft_vocab_size", f"must be an integer >= 0, got "
           f"{config.model.draft_vocab_size!r}")
  _require(len(config.mesh.shape) == 3, "mesh.shape",
           f"must be (data, fsdp, tensor), got {config.mesh.shape}")
  if config.model.init:
    _require(pathlib.Path(config.model.init).expanduser().exists(), "model.init",
             f"{config.model.init!r} does not exist (a HF model directory or .gguf file)")
  else:
    _require(bool(config.model.arch), "model.init",
             "is required (a HF model directory or .gguf file) unless model.arch describes a "
             "from-scratch model")
  tokenizer = config.tokenizer or config.model.init
  _require(bool(tokenizer), "tokenizer", "is required when model.init is empty")
  _require(pathlib.Path(tokenizer).expanduser().exists(), "tokenizer",
           f"{tokenizer!r} does not exist")


def validate_mesh(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
  data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
  micro_batch = config.train.batch_size // config.train.grad_accum_steps
  _require(micro_batch % data_parallel == 0, "train.batch_size",
           f"{config.train.batch_size} / train.grad_accum_steps "
           f"({config.train.grad_accum_steps}) = {micro_batch} rows per micro-batch is not "
           f"divisible by the data-parallel mesh size {data_parallel} "
           f"(data x fsdp of mesh {dict(mesh.shape)})")


def validate_model(config: ml_collections.ConfigDict, model_config: ModelConfig) -> None:
  if config.pard.drafter == "pard":
    _require(config.pard.mask_token < model_config.vocab_size, "pard.mask_token",
             f"{config.pard.mask_token} is outside the model vocabulary "
             f"[0, {model_config.vocab_size})")
  _require(config.model.draft_vocab_size <= model_config.vocab_size, "model.draft_vocab_size",
           f"{config.model.draft_vocab_size} exceeds the model vocabulary "
           f"({model_config.vocab_size})")
  _require(config.data.length <= model_config.max_position_embeddings, "data.length",
           f"{config.data.length} exceeds the model's max_position_embeddings "
           f"({model_config.max_position_embeddings})")


DRAFTERS = ("pard", "parallelspec")


def mask_tokens(config: ml_collections.ConfigDict, vocab_size: int) -> tuple[int, ...]:
  """Depth k's input id at index k - 1; ParallelSpec without ids gets rows V .. V+K-2."""
  k, pard = config.pard.num_depths, config.pard
  if pard.drafter == "pard":
    return (pard.mask_token,) * (k - 1)
  return tuple(pard.mask_tokens) or tuple(range(vocab_size, vocab_size + k - 1))


def drafter_metadata(config: ml_collections.ConfigDict,
                     masks: tuple[int, ...]) -> dict[str, Any]:
  """The ModelConfig fields that tell decoding what kind of drafter this is."""
  if config.pard.drafter == "pard":
    return dict(pard_token=config.pard.mask_token, spd_type="pard")
  return dict(parallelspec_tokens=masks, spd_type="parallelspec")


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
  if config.distributed.num_processes > 1:
    jax.distributed.initialize(coordinator_address=config.distributed.coordinator_address,
                               num_processes=config.distributed.num_processes,
                               process_id=config.distributed.process_id)


def load_model(config: ml_collections.ConfigDict, mesh: Mesh):
  model_cfg = config.model
  if model_cfg.init:
    try:
      return checkpoints.load_model(model_cfg.init, dtype=model_cfg.dtype,
                                    param_dtype=model_cfg.param_dtype, mesh=mesh,
                                    keep_layers=tuple(model_cfg.keep_layers))
    except checkpoints.CheckpointError as e:
      raise TrainConfigError(f"config.model: {e}") from e
  arch = ModelConfig(**model_cfg.arch.to_dict(), dtype=model_cfg.dtype,
                     param_dtype=model_cfg.param_dtype)
  return create_model(arch, model_cfg.seed)


def load_rows(config: ml_collections.ConfigDict, tokenizer) -> data_lib.PackedRows:
  records = data_lib.load_records(config.data.source, config.data.split)
  docs = data_lib.tokenize_records(records, tokenizer, config.data.assistant_only_loss)
  pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  return data_lib.pack(docs, config.data.length, config.data.seed, pad_id)


def total_steps(config: ml_collections.ConfigDict, num_rows: int) -> int:
  if config.train.num_steps > 0:
    return config.train.num_steps
  return max(1, math.ceil(config.train.num_epochs * num_rows / config.train.batch_size))


def optimizer_config(config: ml_collections.ConfigDict, steps: int) -> training.OptimizerConfig:
  t = config.train
  return training.OptimizerConfig(
      learning_rate=t.learning_rate, schedule=t.schedule, warmup_steps=t.warmup_steps,
      total_steps=steps, weight_decay=t.weight_decay, b1=t.b1, b2=t.b2, eps=t.eps,
      max_grad_norm=t.max_grad_norm)


def checkpoint_manager(workdir: pathlib.Path, config) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      (workdir / "checkpoints").absolute(),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.train.max_checkpoints, create=True))


def save_checkpoint(manager: ocp.CheckpointManager, step: int, state, position: int) -> None:
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave({"position": position})))


def restore_checkpoint(manager: ocp.CheckpointManager, step: int, state_sharding, state):
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          state, state_sharding)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
  return restored["state"], int(restored["data"]["position"])


class MetricsLog:
  """Checks every step's loss; every `log_every` steps writes metrics.jsonl, TensorBoard event
  files (`workdir/tensorboard`, via tensorboardX) and the progress bar."""

  def __init__(self, workdir: pathlib.Path, tokens_per_step: int, log_every: int, bar,
               is_main: bool, start_step: int):
    self.path = workdir / "metrics.jsonl"
    self.tokens_per_step, self.log_every, self.bar, self.is_main = (
        tokens_per_step, log_every, bar, is_main)
    self.last_time, self.last_step = time.perf_counter(), None
    self.history: list[dict[str, Any]] = []
    if is_main and self.path.exists():
      # Rows logged after the checkpoint we resume from are logged again: drop them.
      kept = [line for line in self.path.read_text().splitlines()
              if line.strip() and json.loads(line)["step"] <= start_step]
      self.path.write_text("".join(line + "\n" for line in kept))
    # purge_step makes TensorBoard drop what an interrupted run logged past the checkpoint.
    self.writer = (tensorboardX.SummaryWriter(str(workdir / "tensorboard"),
                                              purge_step=start_step + 1) if is_main else None)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()

  def __call__(self, step: int, metrics, last_checkpoint: int | None) -> None:
    metrics = jax.device_get(metrics)
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
      raise FloatingPointError(
          f"loss is {loss} at step {step}: stopping. The last good checkpoint is step "
          f"{last_checkpoint} in {self.path.parent / 'checkpoints'}; lower train.learning_rate "
          f"or check the data before resuming")
    self.bar.update(1)
    if self.last_step is None:
      self.last_step = step - 1
    if step % self.log_every:
      return
    now = time.perf_counter()
    record = dict(step=step, loss=loss, grad_norm=float(metrics["grad_norm"]),
                  tokens_per_s=self.tokens_per_step * (step - self.last_step)
                  / (now - self.last_time))
    for name in ("loss", "accuracy", "kl"):
      per_depth = metrics.get(f"{name}_per_depth")
      for depth, value in enumerate([] if per_depth is None else per_depth.tolist()):
        record[f"{name}/depth_{depth}"] = value
    self.last_time, self.last_step = now, step
    self.history.append(record)
    self.bar.set_postfix(loss=f"{loss:.3f}", acc0=f"{record['accuracy/depth_0']:.2f}",
                         tok_s=f"{record['tokens_per_s']:.0f}")
    if self.is_main:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
      for name, value in record.items():
        if name != "step":
          self.writer.add_scalar(name, value, step)
      self.writer.flush()
      logging.info("step %d: %s", step, record)


def export(model_graphdef, state, mesh: Mesh, workdir: pathlib.Path, tokenizer,
           config: ml_collections.ConfigDict, masks: tuple[int, ...]) -> pathlib.Path:
  """Writes `workdir/hf` from process 0, after gathering the parameters onto every host.

  A drafter trained with its shared tensors frozen (`train.trainable="layers"`) is also
  written as `workdir/delta`: only what differs from `model.init`, in float16.
  """
  params = jax.jit(lambda p: p, out_shardings=NamedSharding(mesh, P()))(state["params"])
  out = workdir / "hf"
  if jax.process_index() == 0:
    model = nnx.merge(model_graphdef, params)
    model.config = model.config.replace(**drafter_metadata(config, masks))
    extra = {}
    hf_config = model.config.to_hf()
    # From-scratch models know their special tokens only through the tokenizer.
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
      if hf_config.get(name) is None and getattr(tokenizer, name, None) is not None:
        extra[name] = getattr(tokenizer, name)
    checkpoints.save_hf(model, out, tokenizer, extra_config=extra)
    if config.train.trainable == "layers" and config.model.init:
      checkpoints.save_delta(model, workdir / "delta", config.model.init,
                             tuple(config.model.keep_layers))
  return out


def train(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  """Trains (or resumes) a PARD drafter; returns the logged metric records of this process."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  validate_config(config)
  initialize_distributed(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding_lib.make_mesh(config.mesh.shape)
  validate_mesh(config, mesh)
  tokenizer = checkpoints.load_tokenizer(config.tokenizer or config.model.init)
  rows = load_rows(config, tokenizer)
  steps = total_steps(config, rows.num_rows)
  model = load_model(config, mesh)
  validate_model(config, model.config)
  masks = mask_tokens(config, model.config.vocab_size)
  if masks and max(masks) >= model.config.vocab_size:
    model = grow_vocab(model, max(masks) + 1)
  if config.model.draft_vocab_size:
    model.config = model.config.replace(draft_vocab=data_lib.frequent_tokens(
        rows, config.model.draft_vocab_size, model.config.vocab_size))
  graphdef, params = nnx.split(model)
  del model
  optimizer = training.make_optimizer(optimizer_config(config, steps), config.train.trainable,
                                      masks)
  state, state_sharding = training.create_sharded_state(params, optimizer, mesh)
  pard = training.PardConfig(
      counts=layout_lib.cod_counts(config.data.length, config.pard.num_depths, config.pard.r,
                                   config.pard.r_min),
      mask_tokens=masks, frozen_head=config.train.trainable == "layers",
      ce_weight=config.loss.ce_weight, kl_weight=config.loss.kl_weight)
  teacher = ()  # the teacher's parameters, the train step's 4th argument, with KL
  teacher_graphdef = teacher_sharding = None
  if pard.kl_weight > 0:
    teacher_graphdef, teacher_params = nnx.split(checkpoints.load_model(
        config.loss.teacher or config.model.init, dtype=config.model.dtype,
        param_dtype=config.model.param_dtype, mesh=mesh))
    teacher = (teacher_params,)
    teacher_sharding = jax.tree.map(lambda x: x.sharding, teacher_params)
  batches = data_lib.BatchIterator(rows, config.train.batch_size, config.data.seed,
                                   process_index=jax.process_index(),
                                   process_count=jax.process_count())
  manager = checkpoint_manager(workdir, config)
  start = manager.latest_step() or 0
  if start:
    state, batches.position = restore_checkpoint(manager, start, state_sharding, state)
    logging.info("resumed from step %d (data position %d)", start, batches.position)
  logging.info("%d packed rows of %d tokens; %d steps; COD slots per depth %s (%.2f x L)",
               rows.num_rows, config.data.length, steps, pard.counts,
               sum(pard.counts) / config.data.length)
  step_fn = training.jit_train_step(graphdef, optimizer, pard, mesh, state_sharding,
                                    config.train.grad_accum_steps, teacher_graphdef,
                                    teacher_sharding)
  in_sharding = sharding_lib.batch_sharding(mesh)
  rng = jax.random.key(config.train.seed)
  is_main = jax.process_index() == 0
  log = None
  try:
    with tqdm(total=steps, initial=start, disable=not is_main, desc="pard") as bar:
      log = MetricsLog(workdir, config.train.batch_size * config.data.length,
                       config.train.log_every, bar, is_main, start)
      pending = None  # the previous step's metrics, read after the next step is dispatched
      for step in range(start + 1, steps + 1):
        batch = {k: jax.make_array_from_process_local_data(in_sharding, v)
                 for k, v in next(batches).items()}
        state, metrics = step_fn(state, batch, rng, *teacher)
        if pending is not None:
          log(*pending, manager.latest_step())
        pending = (step, metrics)
        if step % config.train.checkpoint_every == 0 or step == steps:
          log(*pending, manager.latest_step())  # never checkpoint a non-finite step
          pending = None
          save_checkpoint(manager, step, state, batches.position)
  finally:
    manager.wait_until_finished()
    if log is not None:
      log.close()
  out = export(graphdef, state, mesh, workdir, tokenizer, config, pard.mask_tokens)
  logging.info("exported the PARD drafter to %s", out)
  return log.history
