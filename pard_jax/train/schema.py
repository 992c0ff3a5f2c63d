"""Training config: every field with its default, and the checks that name a bad field.

Checks run in three stages, each as early as it can: `validate_config` before anything loads,
`validate_mesh` once the devices are known, `validate_model` once the model's config is.
"""

from __future__ import annotations

import math
import pathlib

import ml_collections
from jax.sharding import Mesh

from pard_jax import drafting
from pard_jax import layout as layout_lib
from pard_jax import training
from pard_jax.config import DTYPES, ModelConfig


# `pard.drafter`: one shared mask token, or K-1 distinct ones
DRAFTERS = (drafting.PardDrafter.method, drafting.ParallelSpecDrafter.method)


class TrainConfigError(ValueError):
  """A training config value is invalid; the message names the field."""


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


def drafter_kind(config: ml_collections.ConfigDict,
                 vocab_size: int) -> drafting.PardDrafter | drafting.ParallelSpecDrafter:
  """What the run trains, as decoding will read it back from the exported config.json.
  A ParallelSpec drafter without given ids gets new rows V .. V+K-2."""
  pard = config.pard
  if pard.drafter == "pard":
    return drafting.PardDrafter(pard.mask_token)
  return drafting.ParallelSpecDrafter(
      tuple(pard.mask_tokens) or tuple(range(vocab_size, vocab_size + pard.num_depths - 1)))


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
