"""The training request: a config read once into a typed, frozen `TrainSpec`, every check here.

`TrainSpec.from_config` checks each value that needs nothing loaded, in seconds, and names its
field (`config.drafter.r: must be in (0, 1], got 1.5`). Three checks need more and are methods
of the spec, run as soon as what they need is known: `check_mesh` (the devices), `check_model`
(the model's config.json, read before any weight) and `num_steps` (the data's row count). The
run (`train.loop`) reads the spec, never the config.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import TYPE_CHECKING, Any

from pard_jax import rules
from pard_jax import drafter_kinds as kinds
from pard_jax.checkpoints.config_json import read_config
from pard_jax.checkpoints.tokenizer import load_tokenizer, same_vocabulary
from pard_jax.config import ModelConfig
from pard_jax.distributed import DistributedSpec
from pard_jax.errors import require
from pard_jax.train import sections
from pard_jax.train import settings as train_settings
from pard_jax.train.sections import (DataSpec, DrafterSpec, HeldoutSpec, LossSpec, ModelSpec,
                                     RunSpec)

if TYPE_CHECKING:
  from jax.sharding import Mesh



@dataclasses.dataclass(frozen=True)
class TrainSpec:
  model: ModelSpec
  tokenizer: pathlib.Path
  data: DataSpec
  drafter: DrafterSpec
  loss: LossSpec
  train: RunSpec
  heldout: HeldoutSpec
  mesh_shape: tuple[int, int, int]
  distributed: DistributedSpec

  @property
  def cod_counts(self) -> tuple[int, ...]:
    d = self.drafter
    return train_settings.cod_counts(self.data.length, d.num_draft_tokens, d.r, d.r_min)

  def num_steps(self, num_rows: int) -> int:
    if self.train.num_steps > 0:
      return self.train.num_steps
    return max(1, math.ceil(self.train.num_epochs * num_rows / self.train.batch_size))

  def optimizer(self, total_steps: int) -> train_settings.OptimizerConfig:
    return dataclasses.replace(self.train.optimizer, total_steps=total_steps)

  def check_mesh(self, mesh: Mesh) -> None:
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    micro_batch = self.train.batch_size // self.train.grad_accum_steps
    require(micro_batch % data_parallel == 0, "train.batch_size",
            f"{self.train.batch_size} / train.grad_accum_steps ({self.train.grad_accum_steps}) "
            f"= {micro_batch} rows per micro-batch is not divisible by the data-parallel mesh "
            f"size {data_parallel} (data x fsdp of mesh {dict(mesh.shape)})")

  def starting_model_config(self) -> ModelConfig:
    """The drafter's config before training: `model.init`'s config.json, or `model.arch`."""
    return self.model.arch if self.model.init is None else read_config(self.model.init).model

  def check_model(self, model_config: ModelConfig) -> None:
    """Checks against the model's config, before its weights are read."""
    if self.model.keep_layers:
      total = model_config.num_layers
      require(all(0 <= i < total for i in self.model.keep_layers), "model.keep_layers",
              f"{self.model.keep_layers} must be layer indices in [0, {total}) of "
              f"{self.model.init}")
    layers = len(self.model.keep_layers) or model_config.num_layers
    require(all(0 <= i < layers for i in self.model.identity_layers), "model.identity_layers",
            f"{list(self.model.identity_layers)} must be layer indices in [0, {layers}) of the "
            "drafter as cut")
    if self.loss.teacher is not None and self.loss.teacher != self.model.init:
      require(same_vocabulary(load_tokenizer(self.tokenizer), load_tokenizer(self.loss.teacher)),
              "loss.teacher", f"{self.loss.teacher}'s tokenizer is not the drafter's "
              f"({self.tokenizer}): KL, CAT and features compare the two token by token, so a "
              "teacher must share the drafter's tokenizer (its table may be padded)")
    if self.drafter.feature_layers:
      teacher_model = read_config(self.loss.teacher).model
      teacher = teacher_model.num_layers
      require(all(-teacher <= i < teacher for i in self.drafter.feature_layers),
              "drafter.feature_layers", f"{list(self.drafter.feature_layers)} must be layer "
              f"indices of the teacher {self.loss.teacher} ({teacher} layers; negative ones "
              "count from the end)")
      resolved = [i % teacher for i in self.drafter.feature_layers]
      require(len(set(resolved)) == len(resolved), "drafter.feature_layers",
              f"{list(self.drafter.feature_layers)} names a layer twice in the teacher's "
              f"{teacher} layers (as indices: {resolved})")
      if self.drafter.method == kinds.AutoregressiveDrafter.method:
        problem = rules.feature_peer_width(model_config.hidden_size, teacher_model.hidden_size)
        require(not problem, "drafter.method",
                f"sd with features: {problem} ({self.model.init} over {self.loss.teacher})")
    if self.drafter.method == kinds.PardDrafter.method:
      problem = rules.ids_in_vocabulary(self.drafter.mask_token_ids[:1],
                                        model_config.vocab_size, "the model")
      require(not problem, "drafter.mask_token_ids", problem)
    require(self.model.draft_vocab_size <= model_config.vocab_size, "model.draft_vocab_size",
            f"{self.model.draft_vocab_size} exceeds the model vocabulary "
            f"({model_config.vocab_size})")
    require(self.data.length <= model_config.max_position_embeddings, "data.length",
            f"{self.data.length} exceeds the model's max_position_embeddings "
            f"({model_config.max_position_embeddings})")

  def run_defining(self) -> dict[str, Any]:
    """The settings a run's checkpoints depend on, by config key, as JSON values: a run resumes
    only with these unchanged. Free to change on resume: how long the run is, what is logged
    and kept (`RESUMABLE`, `heldout`), the step size (what a diverged run lowers to resume)
    and the devices (`mesh`, `distributed`)."""
    settings = _flat("", {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                          if f.name not in ("mesh_shape", "distributed", "heldout")})
    # The optimizer's fields are `train.*` keys in a config.
    settings = {k.replace("train.optimizer.", "train."): v for k, v in settings.items()}
    return {k: v for k, v in settings.items() if k not in RESUMABLE}

  @classmethod
  def from_config(cls, config) -> TrainSpec:
    """Checks and types every value that needs nothing loaded."""
    c = config.copy_and_resolve_references()
    return cls(model=sections.read_model(c.model), tokenizer=sections.read_tokenizer(c), data=sections.read_data(c.data),
               drafter=sections.read_drafter(c.drafter, c.data.length),
               loss=sections.read_loss(c.loss, c.model.init, bool(tuple(c.drafter.feature_layers))),
               train=sections.read_run(c.train), heldout=sections.read_heldout(c.heldout, c.data.source),
               mesh_shape=_mesh_shape(c.mesh.shape),
               distributed=DistributedSpec.from_config(c.distributed))


# Settings that may change when a run resumes (see `TrainSpec.run_defining`); total_steps is
# derived from num_steps or num_epochs.
RESUMABLE = frozenset(
    [f"train.{name}" for name in ("num_epochs", "num_steps", "total_steps", "log_every",
                                  "checkpoint_every", "max_checkpoints", "learning_rate",
                                  "schedule", "warmup_steps", "max_grad_norm")]
    + ["data.resume_on_new_data"])


def _flat(prefix: str, value) -> dict[str, Any]:
  """Nested dataclasses and dicts as `{"a.b.c": JSON value}`."""
  if dataclasses.is_dataclass(value):
    value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
  if isinstance(value, dict):
    return {k: v for name, item in value.items() for k, v in _flat(f"{prefix}{name}.", item)
            .items()}
  if isinstance(value, pathlib.Path):
    value = str(value)
  return {prefix[:-1]: json.loads(json.dumps(value))}  # tuples as lists, as read back


def _mesh_shape(shape: Any) -> tuple[int, int, int]:
  require(len(shape) == 3 and all(rules.is_int(s) for s in shape), "mesh.shape",
          f"must be (data, fsdp, tensor), got {shape}")
  return tuple(shape)
