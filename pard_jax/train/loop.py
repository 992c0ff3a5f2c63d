"""The training run: spec -> data, model, sharded state -> steps, logs, checkpoints, export.

`workdir` holds `checkpoints/` (orbax: train state + data position, only of finite states),
`run_spec.json` (the settings those depend on), `metrics.jsonl`, `heldout.jsonl` (with
`heldout.source`: greedy acceptance on held-out rows), `tensorboard/` and, at the end,
`hf/`: a Hugging Face directory whose `config.json` declares
its drafter kind (`PardDrafter` or `ParallelSpecDrafter`), usable as a drafter with no other
flag (and `delta/`, the same drafter stored as its difference from `model.init`, when only the
layers trained). A run restarted on the same workdir resumes from the latest checkpoint and
continues exactly as if it had not stopped; it refuses settings that differ from the run's
(`TrainSpec.run_defining`). A run whose loss or gradient turns nan or inf stops, and sets aside
(`workdir/diverged/`) the checkpoint that led there whatever the learning rate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import sys
import tempfile
from typing import Any

import jax
from absl import logging
from flax import nnx
from jax.sharding import Mesh

from pard_jax import adapters
from pard_jax import checkpoints
from pard_jax import packing
from pard_jax import distributed
from pard_jax import drafter_kinds as kinds
from pard_jax import files
from pard_jax import sharding as sharding_lib
from pard_jax.errors import CheckpointError, ConfigError
from pard_jax.model import (Transformer, add_feature_input, create_model, grow_vocab,
                            make_identity_layers)
from pard_jax.train import checkpointing
from pard_jax.train import heldout
from pard_jax.train import optimizer as optimizer_lib
from pard_jax.train import settings as train_settings
from pard_jax.train import step as step_lib
from pard_jax.train.export import export
from pard_jax.train.metrics import MetricsLog, NonFinite
from pard_jax.train.spec import TrainSpec


def _say(line: str) -> None:
  """A line for the person running the job (process 0 only), beside the progress bar."""
  if jax.process_index() == 0:
    print(line, file=sys.stderr)


def init_model(spec: TrainSpec, mesh: Mesh) -> Transformer:
  """The drafter's starting point: `model.init` (cut to `keep_layers`, `identity_layers`
  zeroed) or a fresh `model.arch`.
  The model's config is checked against the spec before any weight is read."""
  m = spec.model
  spec.check_model(spec.starting_model_config())
  if m.init is None:
    model = create_model(m.arch, m.seed)
  else:
    model = checkpoints.load_model(m.init, dtype=m.dtype, param_dtype=m.param_dtype, mesh=mesh,
                                   keep_layers=m.keep_layers)
  return make_identity_layers(model, m.identity_layers)


def load_rows(spec: TrainSpec, tokenizer, source: str = "") -> packing.PackedRows:
  """The packed rows of `data.source`, or of `source` read the same way (held-out rows)."""
  d = spec.data
  return packing.load_rows(source or d.source, tokenizer, d.length, split=d.split,
                            tfds_data_dir=d.tfds_data_dir,
                            assistant_only_loss=d.assistant_only_loss, seed=d.seed)


@dataclasses.dataclass
class Setup:
  """What a run trains, and with what: the drafter (split), its kind and mask ids, the train
  step's static settings and, with KL, CAT or features, the frozen teacher (split)."""
  graphdef: nnx.GraphDef
  params: Any
  kind: kinds.DrafterKind
  masks: tuple[int, ...]
  step_cfg: train_settings.StepConfig
  teacher_graphdef: nnx.GraphDef | None = None
  teacher_params: Any = None


def prepare(spec: TrainSpec, mesh: Mesh, rows: packing.PackedRows) -> Setup:
  """The drafter as it starts (`init_model`, mask rows, feature input, restricted head), its
  step settings and the teacher, loaded onto `mesh`."""
  model = init_model(spec, mesh)
  kind = spec.drafter.kind(model.config.vocab_size)
  masks = kind.mask_ids(spec.drafter.num_draft_tokens)
  if masks and max(masks) >= model.config.vocab_size:
    model = grow_vocab(model, max(masks) + 1)
  layers = spec.drafter.feature_layers
  if layers and not model.config.feature_size:
    width = checkpoints.read_config(spec.loss.teacher).model.hidden_size
    model = add_feature_input(model, len(layers), len(layers) * width)
  if spec.train.trainable == "lora":
    model = adapters.add_adapters(model, spec.train.lora_rank, masks, seed=spec.model.seed)
  if spec.model.draft_vocab_size:
    model.config = model.config.replace(draft_vocab=packing.frequent_tokens(
        rows, spec.model.draft_vocab_size, model.config.vocab_size))
  graphdef, params = nnx.split(model)
  step_cfg = train_settings.StepConfig(
      counts=spec.cod_counts, mask_tokens=spec.drafter.layout_masks(kind),
      frozen_head=spec.train.trainable == "layers", adapters=spec.train.trainable == "lora",
      ce_weight=spec.loss.ce_weight,
      kl_weight=spec.loss.kl_weight, cat_weighting=spec.loss.cat_weighting,
      feature_layers=layers, feature_dropout=spec.drafter.feature_dropout,
      autoregressive=kind.autoregressive,
      feedback_gradient=spec.drafter.feedback_gradient)
  setup = Setup(graphdef, params, kind, masks, step_cfg)
  if step_cfg.uses_teacher:
    setup.teacher_graphdef, setup.teacher_params = nnx.split(checkpoints.load_model(
        spec.loss.teacher, dtype=spec.model.dtype, param_dtype=spec.model.param_dtype,
        mesh=mesh))
  return setup


def make_workdir(workdir: str) -> pathlib.Path:
  """The workdir, created if need be; a `ConfigError` naming it when it cannot be one."""
  path = pathlib.Path(workdir)
  if path.exists() and not path.is_dir():
    raise ConfigError(f"workdir: {path} is a file; give a directory (it receives checkpoints/, "
                      f"metrics.jsonl and hf/)")
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"workdir: cannot create {path}: {e.strerror or e}") from e
  try:  # a finished run resumed with more steps writes checkpoints and metrics
    tempfile.TemporaryFile(dir=path).close()
  except OSError as e:
    raise ConfigError(f"workdir: cannot write in {path}: {e.strerror or e}") from e
  return path


def stopped(error: NonFinite, manager, workdir: pathlib.Path) -> str:
  """Why the run stopped and how to go on, once the checkpoint that led there is set aside."""
  manager.wait_until_finished()
  note, bad = "", None
  if error.from_previous_state and manager.latest_step() == error.step - 1:
    bad = error.step - 1
    moved = checkpointing.set_aside(manager, bad, workdir / "diverged")
    note = (f" Checkpoint {bad}, which step {error.step} started from, leads there whatever the "
            f"learning rate: moved to {moved}.")
  last = max((s for s in manager.all_steps() if s != bad), default=None)
  if last is None:
    advice = ("No good checkpoint is left: rerun with a lower --config.train.learning_rate (or "
              "check the data) to start again from step 0")
  else:
    advice = (f"The last good checkpoint is step {last} in {workdir / 'checkpoints'}: rerun with "
              f"a lower --config.train.learning_rate (or check the data) to resume from it")
  return f"{error}: stopping.{note} {advice}"


def train(config, workdir: str) -> list[dict[str, Any]]:
  """Trains (or resumes) a drafter from a training config (or a `TrainSpec`); returns the
  logged metric records of this process."""
  spec = config if isinstance(config, TrainSpec) else TrainSpec.from_config(config)
  distributed.initialize(spec.distributed)
  try:  # before any file is written
    mesh = sharding_lib.make_mesh(spec.mesh_shape)
  except ValueError as e:
    raise ConfigError(f"config.mesh.shape: {e}") from None
  workdir = make_workdir(workdir)
  # One run at a time writes a workdir (process 0 writes for all).
  lock = (files.locked(workdir, "workdir", "training run", "--workdir")
          if jax.process_index() == 0 else contextlib.nullcontext())
  with lock:
    return _train(spec, workdir, mesh)


def _train(spec: TrainSpec, workdir: pathlib.Path, mesh: Mesh) -> list[dict[str, Any]]:
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  run = spec.train
  manager = checkpointing.checkpoint_manager(workdir, run.max_checkpoints)
  start = manager.latest_step()
  # A fresh run checks the batch against the mesh before run_spec.json is written; a resume
  # once its settings are compared with the workdir's (other settings say more).
  if start is None:
    spec.check_mesh(mesh)
  checkpointing.claim_workdir(workdir, spec.run_defining(), start, spec.data.source_hashes(),
                              spec.data.resume_on_new_data)
  if start is not None:
    spec.check_mesh(mesh)
  start = start or 0
  tokenizer = checkpoints.load_tokenizer(spec.tokenizer)
  rows = load_rows(spec, tokenizer)
  heldout_rows = None
  if spec.heldout.source:
    heldout_rows = heldout.first_rows(load_rows(spec, tokenizer, spec.heldout.source),
                                      spec.heldout.max_rows)
    heldout.check_unseen(heldout_rows, rows)
  steps = spec.num_steps(rows.num_rows)
  setup = prepare(spec, mesh, rows)
  graphdef, kind, step_cfg = setup.graphdef, setup.kind, setup.step_cfg
  optimizer = optimizer_lib.make_optimizer(spec.optimizer(steps), run.trainable, setup.masks)
  state, state_sharding = step_lib.create_sharded_state(setup.params, optimizer, mesh,
                                                        step_cfg.adapters)
  setup.params = None  # the state holds them now
  teacher = () if setup.teacher_params is None else (setup.teacher_params,)
  teacher_graphdef = setup.teacher_graphdef
  teacher_sharding = (None if setup.teacher_params is None else
                      jax.tree.map(lambda x: x.sharding, setup.teacher_params))
  batches = packing.BatchIterator(rows, run.batch_size, spec.data.seed,
                                   process_index=jax.process_index(),
                                   process_count=jax.process_count())
  if start:
    state, batches.position = checkpointing.restore_checkpoint(manager, start, state_sharding,
                                                               state)
    if not checkpointing.all_finite(state):  # saved by an older pard_jax
      raise CheckpointError(f"checkpoint {start} in {workdir / 'checkpoints'} holds nan or inf "
                            f"values; move it to {workdir / 'diverged'} to resume from the one "
                            f"before")
    # Every process says so: each restores its own share of the state.
    print(f"resumed from step {start} (data position {batches.position})", file=sys.stderr)
  logging.info("%d packed rows of %d tokens; %d steps; COD slots per depth %s (%.2f x L)",
               rows.num_rows, spec.data.length, steps, step_cfg.counts,
               sum(step_cfg.counts) / spec.data.length)
  step_fn = step_lib.jit_train_step(graphdef, optimizer, step_cfg, mesh, state_sharding,
                                    run.grad_accum_steps, teacher_graphdef, teacher_sharding)
  in_sharding = sharding_lib.batch_sharding(mesh)
  evaluate = None
  if heldout_rows is not None:
    evaluate = heldout.Evaluator(heldout_rows, graphdef, step_cfg, spec.data.length, mesh,
                                 state_sharding["params"], run.batch_size // run.grad_accum_steps,
                                 teacher_graphdef, teacher_sharding)
  rng = jax.random.key(run.seed)
  is_main = jax.process_index() == 0
  log = None
  try:
    with tqdm(total=steps, initial=start, disable=not is_main, desc=kind.method) as bar:
      log = MetricsLog(workdir, run.batch_size * spec.data.length, run.log_every, bar, is_main,
                       start)
      pending = None  # the previous step's metrics, read after the next step is dispatched
      for step in range(start + 1, steps + 1):
        batch = {k: jax.make_array_from_process_local_data(in_sharding, v)
                 for k, v in next(batches).items()}
        state, metrics = step_fn(state, batch, rng, *teacher)
        if pending is not None:
          log(*pending)
        pending = (step, metrics)
        # Before the checkpoint: a run stopped in between redoes both, nothing is missed.
        if evaluate is not None and spec.heldout.due(step, run, steps):
          log.heldout(step, evaluate(state["params"], *teacher))
        if step % run.checkpoint_every == 0 or step == steps:
          log(*pending)  # checkpoints only of finite steps and states
          pending = None
          if not checkpointing.all_finite(state):
            raise NonFinite(step, "a parameter or optimizer moment is nan or inf",
                            from_previous_state=False)
          checkpointing.save_checkpoint(manager, step, state, batches.position)
  except NonFinite as e:
    raise FloatingPointError(stopped(e, manager, workdir)) from None
  finally:
    manager.wait_until_finished()
    if log is not None:
      log.close()
  out = export(graphdef, state, mesh, workdir, tokenizer, spec, kind)
  _say(f"exported the {kind.method} drafter to {out}")
  return log.history
