"""The training run: config -> data, model, sharded state -> steps, logs, checkpoints, export.

`workdir` holds `checkpoints/` (orbax: train state + data position), `metrics.jsonl`,
`tensorboard/` and, at the end, `hf/`: a Hugging Face directory whose `config.json` declares
its drafter kind (`drafting.PardDrafter` or `ParallelSpecDrafter`), usable as a drafter with no
other flag (and `delta/`, the same drafter stored as its difference from `model.init`, when
only the layers trained). A run restarted on the same workdir resumes from the latest
checkpoint and continues exactly as if it had not stopped.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import ml_collections
from absl import logging
from flax import nnx
from jax.sharding import Mesh

from pard_jax import checkpoints
from pard_jax import data as data_lib
from pard_jax import layout as layout_lib
from pard_jax import sharding as sharding_lib
from pard_jax import training
from pard_jax.config import ModelConfig
from pard_jax.model import create_model, grow_vocab
from pard_jax.train import checkpointing, schema
from pard_jax.train.export import export
from pard_jax.train.metrics import MetricsLog


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
  if config.distributed.num_processes > 1:
    # CPU processes reduce across hosts over gloo; accelerators bring their own collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
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
      raise schema.TrainConfigError(f"config.model: {e}") from e
  arch = ModelConfig(**model_cfg.arch.to_dict(), dtype=model_cfg.dtype,
                     param_dtype=model_cfg.param_dtype)
  return create_model(arch, model_cfg.seed)


def load_rows(config: ml_collections.ConfigDict, tokenizer) -> data_lib.PackedRows:
  records = data_lib.load_records(config.data.source, config.data.split)
  docs = data_lib.tokenize_records(records, tokenizer, config.data.assistant_only_loss)
  pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  return data_lib.pack(docs, config.data.length, config.data.seed, pad_id)


def train(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  """Trains (or resumes) a PARD drafter; returns the logged metric records of this process."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  schema.validate_config(config)
  initialize_distributed(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding_lib.make_mesh(config.mesh.shape)
  schema.validate_mesh(config, mesh)
  tokenizer = checkpoints.load_tokenizer(config.tokenizer or config.model.init)
  rows = load_rows(config, tokenizer)
  steps = schema.total_steps(config, rows.num_rows)
  model = load_model(config, mesh)
  schema.validate_model(config, model.config)
  kind = schema.drafter_kind(config, model.config.vocab_size)
  masks = kind.mask_ids(config.pard.num_depths)
  if masks and max(masks) >= model.config.vocab_size:
    model = grow_vocab(model, max(masks) + 1)
  if config.model.draft_vocab_size:
    model.config = model.config.replace(draft_vocab=data_lib.frequent_tokens(
        rows, config.model.draft_vocab_size, model.config.vocab_size))
  graphdef, params = nnx.split(model)
  del model
  optimizer = training.make_optimizer(schema.optimizer_config(config, steps),
                                      config.train.trainable, masks)
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
  manager = checkpointing.checkpoint_manager(workdir, config)
  start = manager.latest_step() or 0
  if start:
    state, batches.position = checkpointing.restore_checkpoint(manager, start, state_sharding,
                                                               state)
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
          checkpointing.save_checkpoint(manager, step, state, batches.position)
  finally:
    manager.wait_until_finished()
    if log is not None:
      log.close()
  out = export(graphdef, state, mesh, workdir, tokenizer, config, kind)
  logging.info("exported the PARD drafter to %s", out)
  return log.history
