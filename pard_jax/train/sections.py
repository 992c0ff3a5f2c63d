"""The sections of a training config (`model`, `data`, `drafter`, `loss`, `train`, `heldout`),
each a typed, frozen spec beside the reader that checks its values (`read_model`, ...), naming
the field of a bad one. `train.spec.TrainSpec` composes them and checks across sections.
"""

from __future__ import annotations

import dataclasses
import pathlib

from pard_jax import data as data_lib
from pard_jax import files, rules
from pard_jax import drafter_kinds as kinds
from pard_jax.checkpoints import assets
from pard_jax.config import DTYPES, ModelConfig
from pard_jax.errors import ConfigError, require
from pard_jax.train import settings as train_settings


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  init: pathlib.Path | None  # None: a from-scratch model of `arch`
  arch: ModelConfig | None
  keep_layers: tuple[int, ...]
  identity_layers: tuple[int, ...]
  draft_vocab_size: int
  dtype: str
  param_dtype: str
  seed: int


@dataclasses.dataclass(frozen=True)
class DataSpec:
  source: str
  split: str
  tfds_data_dir: pathlib.Path | None  # None: TFDS's default
  assistant_only_loss: bool
  length: int
  seed: int
  resume_on_new_data: bool

  def source_hashes(self) -> dict[str, str]:
    """sha256 of every local file the sources read, by portable name (`checkpointing`)."""
    return {assets.portable(path): files.sha256(path)
            for source in data_lib.split_sources(self.source)
            for path in data_lib.source_files(source)}


@dataclasses.dataclass(frozen=True)
class DrafterSpec:
  method: str  # one of kinds.TRAINED_KINDS
  num_draft_tokens: int  # K
  mask_token_ids: tuple[int, ...]
  r: float
  r_min: float
  feature_layers: tuple[int, ...]  # () = a token-only drafter
  feature_dropout: float
  feedback_gradient: bool  # sd with features only

  def kind(self, vocab_size: int) -> kinds.DrafterKind:
    """What the run trains, as decoding reads it back from the exported config.json. A
    ParallelSpec drafter without given ids gets new rows V .. V+K-2."""
    layers = self.feature_layers
    if self.method == kinds.AutoregressiveDrafter.method:
      return kinds.AutoregressiveDrafter(layers)
    if self.method == kinds.PardDrafter.method:
      return kinds.PardDrafter(self.mask_token_ids[0], layers)
    return kinds.ParallelSpecDrafter(self.mask_token_ids or tuple(
        range(vocab_size, vocab_size + self.num_draft_tokens - 1)), layers)

  def layout_masks(self, kind: kinds.DrafterKind) -> tuple[int, ...]:
    return kind.layout_masks(self.num_draft_tokens)


@dataclasses.dataclass(frozen=True)
class LossSpec:
  ce_weight: float
  kl_weight: float
  cat_weighting: bool
  teacher: pathlib.Path | None  # with KL, CAT or features: model.init unless given


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """The `train` section: batches, steps, optimizer and what is logged and kept."""
  batch_size: int
  grad_accum_steps: int
  num_epochs: float
  num_steps: int
  optimizer: train_settings.OptimizerConfig  # total_steps is set by `TrainSpec.optimizer`
  trainable: str
  lora_rank: int  # with trainable "lora"
  seed: int
  log_every: int
  checkpoint_every: int
  max_checkpoints: int


@dataclasses.dataclass(frozen=True)
class HeldoutSpec:
  """The `heldout` section: held-out rows whose greedy acceptance the run logs."""
  source: str  # "" = none
  max_rows: int  # 0 = all
  every: int  # 0 = with each checkpoint

  def due(self, step: int, run: RunSpec, last_step: int) -> bool:
    if not self.source:
      return False
    every = self.every or run.checkpoint_every
    return step % every == 0 or step == last_step



def read_model(m) -> ModelSpec:
  for field in ("dtype", "param_dtype"):
    require(m[field] in DTYPES, f"model.{field}", f"must be one of {DTYPES}, got {m[field]!r}")
  require(rules.is_int(m.draft_vocab_size) and m.draft_vocab_size >= 0, "model.draft_vocab_size",
          f"must be an integer >= 0, got {m.draft_vocab_size!r}")
  init = assets.resolve_setting(m.init, "model.init")
  keep_layers = tuple(m.keep_layers)
  require(not keep_layers or init is not None, "model.keep_layers",
          "cuts the layers of model.init, which is empty")
  require(all(rules.is_int(i) for i in keep_layers), "model.keep_layers",
          f"must be layer indices, got {keep_layers}")
  identity_layers = tuple(m.identity_layers)
  require(all(rules.is_int(i) for i in identity_layers)
          and len(set(identity_layers)) == len(identity_layers), "model.identity_layers",
          f"must be distinct layer indices, got {identity_layers}")
  # Zeroing a layer's output is meant for a copy grown beside its original: on any other layer
  # it throws that layer's training away.
  originals = [i for i in identity_layers if not keep_layers or (  # the cut checks the range
      0 <= i < len(keep_layers) and keep_layers.index(keep_layers[i]) == i)]
  require(not originals, "model.identity_layers",
          f"{list(identity_layers)}: each must be the later copy of a layer model.keep_layers "
          f"repeats (e.g. keep_layers=(0, 0) with identity_layers=(1,)), got keep_layers="
          f"{keep_layers}; otherwise it zeroes a trained layer")
  arch = None
  if init is not None:
    require(init.exists(), "model.init",
            f"{m.init!r} does not exist (a HF model directory or .gguf file)")
  else:
    require(bool(m.arch), "model.init", "is required (a HF model directory or .gguf file) "
            "unless model.arch describes a from-scratch model")
    try:
      arch = ModelConfig(**m.arch.to_dict(), dtype=m.dtype, param_dtype=m.param_dtype)
    except (TypeError, ConfigError) as e:
      raise ConfigError(f"config.model.arch: {e}") from e
  return ModelSpec(init=init, arch=arch, keep_layers=keep_layers, identity_layers=identity_layers,
                   draft_vocab_size=m.draft_vocab_size, dtype=m.dtype, param_dtype=m.param_dtype,
                   seed=m.seed)


def read_tokenizer(c) -> pathlib.Path:
  tokenizer = c.tokenizer or c.model.init
  require(bool(tokenizer), "tokenizer", "is required when model.init is empty")
  path = assets.resolve_setting(tokenizer, "tokenizer")
  require(path.exists(), "tokenizer", f"{tokenizer!r} does not exist")
  return path


def read_sources(value: str, field: str) -> tuple[str, ...]:
  """The comma-separated sources of `value`, none empty or given twice."""
  sources = data_lib.split_sources(value)
  require(all(sources), field, f"lists an empty source: {value!r}")
  require(len(set(sources)) == len(sources), field, f"lists a source twice: {value!r}")
  return sources


def read_data(d) -> DataSpec:
  require(bool(d.source), "data.source", "is required (jsonl/json/parquet path, sharegpt, hub "
          "dataset name or tfds:NAME; several comma-separated)")
  sources = read_sources(d.source, "data.source")
  require(rules.is_int(d.length) and d.length >= 1, "data.length",
          f"must be an integer >= 1, got {d.length!r}")
  tfds_data_dir = None
  if d.tfds_data_dir:
    require(any(source.startswith("tfds:") for source in sources), "data.tfds_data_dir",
            f"is only read for data.source='tfds:NAME', got data.source={d.source!r}")
    tfds_data_dir = pathlib.Path(d.tfds_data_dir).expanduser()
    require(tfds_data_dir.is_dir(), "data.tfds_data_dir",
            f"{d.tfds_data_dir!r} is not a directory (where tfds:NAME is prepared)")
  return DataSpec(source=d.source, split=d.split, tfds_data_dir=tfds_data_dir,
                  assistant_only_loss=bool(d.assistant_only_loss), length=d.length, seed=d.seed,
                  resume_on_new_data=bool(d.resume_on_new_data))


def read_heldout(h, training_source: str) -> HeldoutSpec:
  sources = read_sources(h.source, "heldout.source") if h.source else ()
  shared = set(sources) & set(data_lib.split_sources(training_source))
  require(not shared, "heldout.source", f"{', '.join(sorted(shared))} is also in data.source: "
          "held-out rows must be text the run does not train on")
  for field in ("max_rows", "every"):
    require(rules.is_int(h[field]) and h[field] >= 0, f"heldout.{field}",
            f"must be an integer >= 0, got {h[field]!r}")
  return HeldoutSpec(source=h.source, max_rows=h.max_rows, every=h.every)


def read_drafter(d, length: int) -> DrafterSpec:
  k = d.num_draft_tokens
  problem = rules.num_draft_tokens(k)
  require(not problem, "drafter.num_draft_tokens", problem)
  require(0.0 < d.r <= 1.0, "drafter.r", f"must be in (0, 1], got {d.r}")
  require(0.0 <= d.r_min <= 1.0, "drafter.r_min", f"must be in [0, 1], got {d.r_min}")
  layers = tuple(d.feature_layers)
  require(all(rules.is_int(i) for i in layers) and len(set(layers)) == len(layers),
          "drafter.feature_layers", f"must be distinct layer indices, got {layers!r}")
  require(0 <= d.feature_dropout < 1, "drafter.feature_dropout",
          f"must be in [0, 1), got {d.feature_dropout}")
  require(not d.feature_dropout or layers, "drafter.feature_dropout",
          f"({d.feature_dropout}) drops the target's features, which only a drafter with "
          "drafter.feature_layers reads")
  trained = kinds.TRAINED_KINDS + ((kinds.AutoregressiveDrafter.method,) if layers else ())
  require(d.method in trained, "drafter.method",
          f"unknown method {d.method!r}; choose from {', '.join(kinds.TRAINED_KINDS)} (and sd "
          "with drafter.feature_layers: the autoregressive feature peer)")
  require(isinstance(d.feedback_gradient, bool), "drafter.feedback_gradient",
          f"must be True or False, got {d.feedback_gradient!r}")
  require(not d.feedback_gradient or (d.method == kinds.AutoregressiveDrafter.method and layers),
          "drafter.feedback_gradient", "applies to the autoregressive feature peer only "
          f"(method sd with drafter.feature_layers), not to method {d.method!r}")
  ids = tuple(d.mask_token_ids)
  valid_ids = all(rules.is_int(i) and i >= 0 for i in ids)
  if d.method == kinds.AutoregressiveDrafter.method:
    require(not ids, "drafter.mask_token_ids", f"sd feeds no mask tokens, got {ids}")
  elif d.method == kinds.PardDrafter.method:
    require(len(ids) == 1 and valid_ids, "drafter.mask_token_ids",
            f"pard needs one vocabulary id >= 0, e.g. (4,), got {ids!r}")
  else:
    require(not ids or (len(ids) == k - 1 and len(set(ids)) == len(ids) and valid_ids),
            "drafter.mask_token_ids", f"must be {k - 1} distinct ids >= 0 (one per depth "
            f"1..K-1), or empty to append new rows; got {ids}")
  require(length >= k, "data.length", f"({length}) must be >= drafter.num_draft_tokens ({k})")
  counts = train_settings.cod_counts(length, k, d.r, d.r_min)
  require(min(counts) >= 1, "data.length", f"{length} is too short for drafter.r={d.r}, "
          f"drafter.r_min={d.r_min}: COD keeps {counts} slots per depth")
  return DrafterSpec(method=d.method, num_draft_tokens=k, mask_token_ids=ids, r=d.r,
                     r_min=d.r_min, feature_layers=layers,
                     feature_dropout=float(d.feature_dropout),
                     feedback_gradient=d.feedback_gradient)


def read_loss(loss, init: str, reads_features: bool) -> LossSpec:
  require(loss.ce_weight >= 0 and loss.kl_weight >= 0 and loss.ce_weight + loss.kl_weight > 0,
          "loss", f"ce_weight and kl_weight must be >= 0 and not both 0, got "
          f"{loss.ce_weight}, {loss.kl_weight}")
  require(isinstance(loss.cat_weighting, bool), "loss.cat_weighting",
          f"must be True or False, got {loss.cat_weighting!r}")
  teacher = None
  if loss.kl_weight > 0 or loss.cat_weighting or reads_features:
    require(bool(loss.teacher or init), "loss.teacher", "is required for kl_weight > 0, "
            "cat_weighting or drafter.feature_layers when model.init is empty (a HF directory "
            "or .gguf of the target)")
    teacher = assets.resolve_setting(loss.teacher or init, "loss.teacher")
    require(teacher.exists(), "loss.teacher", f"{loss.teacher or init!r} does not exist")
  return LossSpec(ce_weight=loss.ce_weight, kl_weight=loss.kl_weight,
                  cat_weighting=loss.cat_weighting, teacher=teacher)


def read_run(t) -> RunSpec:
  require(rules.is_int(t.batch_size) and t.batch_size >= 1, "train.batch_size",
          f"must be an integer >= 1, got {t.batch_size}")
  require(rules.is_int(t.grad_accum_steps) and t.grad_accum_steps >= 1
          and t.batch_size % t.grad_accum_steps == 0, "train.grad_accum_steps",
          f"({t.grad_accum_steps}) must be >= 1 and divide train.batch_size ({t.batch_size})")
  require(t.trainable in train_settings.TRAINABLE, "train.trainable",
          f"unknown value {t.trainable!r}; known: {train_settings.TRAINABLE}")
  require(rules.is_int(t.lora_rank) and t.lora_rank >= 1, "train.lora_rank",
          f"must be an integer >= 1, got {t.lora_rank!r}")
  require(t.schedule in train_settings.SCHEDULES, "train.schedule",
          f"unknown schedule {t.schedule!r}; known: {train_settings.SCHEDULES}")
  require(t.learning_rate > 0, "train.learning_rate", f"must be > 0, got {t.learning_rate}")
  require(t.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {t.warmup_steps}")
  for field in ("b1", "b2"):
    require(0 <= t[field] < 1, f"train.{field}", f"must be in [0, 1), got {t[field]}")
  require(t.eps > 0, "train.eps", f"must be > 0, got {t.eps}")
  require(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {t.weight_decay}")
  require(t.max_grad_norm >= 0, "train.max_grad_norm",
          f"must be >= 0 (0 = no clipping), got {t.max_grad_norm}")
  require(t.num_steps > 0 or t.num_epochs > 0, "train.num_epochs",
          "must be > 0 unless train.num_steps > 0")
  for field in ("log_every", "checkpoint_every", "max_checkpoints"):
    require(t[field] >= 1, f"train.{field}", f"must be >= 1, got {t[field]}")
  optimizer = train_settings.OptimizerConfig(
      learning_rate=t.learning_rate, schedule=t.schedule, warmup_steps=t.warmup_steps,
      weight_decay=t.weight_decay, b1=t.b1, b2=t.b2, eps=t.eps, max_grad_norm=t.max_grad_norm)
  return RunSpec(batch_size=t.batch_size, grad_accum_steps=t.grad_accum_steps,
                 num_epochs=t.num_epochs, num_steps=t.num_steps, optimizer=optimizer,
                 trainable=t.trainable, lora_rank=t.lora_rank, seed=t.seed, log_every=t.log_every,
                 checkpoint_every=t.checkpoint_every, max_checkpoints=t.max_checkpoints)
