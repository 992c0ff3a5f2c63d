"""A run's workdir: orbax checkpoints (the train state and the data position), only of finite
states, the settings they depend on (`run_spec.json`), and quieter orbax logs."""

from __future__ import annotations

import json
import logging as std_logging
import pathlib
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging

from pard_jax.errors import CheckpointError, ConfigError
from pard_jax.files import write_atomically

RUN_SPEC = "run_spec.json"


class _WarningsOnlyFromOrbax(std_logging.Filter):

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def quiet_orbax_logs() -> None:
  """Keeps INFO logs readable: orbax logs several INFO lines per checkpoint."""
  logging.get_absl_handler().addFilter(_WarningsOnlyFromOrbax())


def checkpoint_manager(workdir: pathlib.Path, max_checkpoints: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      (workdir / "checkpoints").absolute(),
      options=ocp.CheckpointManagerOptions(max_to_keep=max_checkpoints, create=True))


def save_checkpoint(manager: ocp.CheckpointManager, step: int, state, position: int) -> None:
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave({"position": position})))


def restore_checkpoint(manager: ocp.CheckpointManager, step: int, state_sharding, state):
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          state, state_sharding)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
  return restored["state"], int(restored["data"]["position"])


SOURCES = "data.source_sha256"  # run_spec.json: sha256 of every data file, by name


def claim_workdir(workdir: pathlib.Path, settings: dict[str, Any], resume_step: int | None,
                  sources: dict[str, str] | None = None, resume_on_new_data: bool = False
                  ) -> None:
  """Starting afresh, records the run's settings (`TrainSpec.run_defining`) and its data
  files' sha256 (`sources`) as `workdir/run_spec.json`; resuming from checkpoint
  `resume_step`, refuses settings that differ from those recorded, listing each, and changed
  data files unless `resume_on_new_data` (which records the new ones)."""
  path = workdir / RUN_SPEC
  settings = dict(settings, **({SOURCES: sources} if sources is not None else {}))
  if resume_step is None:
    if jax.process_index() == 0:
      write_atomically(path, json.dumps(settings, indent=1, sort_keys=True) + "\n")
    return
  if not path.exists():
    logging.warning("%s has no %s (an older pard_jax wrote it): resuming without comparing the "
                    "settings", workdir, RUN_SPEC)
    return
  try:
    stored = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: not valid JSON ({e}); restore it or use a fresh workdir") \
        from e
  _check_sources(path, stored.get(SOURCES), settings.get(SOURCES), resume_on_new_data)
  if resume_on_new_data and SOURCES in settings and stored.get(SOURCES) != settings[SOURCES]:
    if jax.process_index() == 0:
      write_atomically(path, json.dumps(dict(stored, **{SOURCES: settings[SOURCES]}), indent=1,
                                        sort_keys=True) + "\n")
  # Settings added or dropped since the workdir was written cannot be compared.
  differing = sorted(k for k in stored.keys() & settings.keys()
                     if k != SOURCES and stored[k] != settings[k])
  if differing:
    changes = "; ".join(f"{k}: {json.dumps(stored[k])} in the workdir, {json.dumps(settings[k])}"
                        f" now" for k in differing)
    raise ConfigError(f"config.{differing[0]}: {workdir} holds a run (checkpoint at step "
                      f"{resume_step}) trained with other settings: {changes}. Resume with the "
                      f"settings of {path}, or start a fresh workdir")


@jax.jit
def _all_finite(leaves):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def all_finite(state) -> bool:
  """Whether every floating-point value of `state` is finite."""
  leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
  return bool(_all_finite(leaves))


def set_aside(manager: ocp.CheckpointManager, step: int, directory: pathlib.Path
              ) -> pathlib.Path:
  """Moves checkpoint `step` to `directory/<step>`, out of the manager's reach (a resume starts
  from the one before), and returns that path. One set aside earlier at the same step, from
  the same state, is replaced."""
  manager.wait_until_finished()
  target = directory / str(step)
  if jax.process_index() == 0:
    directory.mkdir(parents=True, exist_ok=True)
    if target.exists():
      shutil.rmtree(target)
    (pathlib.Path(manager.directory) / str(step)).rename(target)
  return target


def _check_sources(path: pathlib.Path, stored: dict[str, str] | None,
                   current: dict[str, str] | None, resume_on_new_data: bool) -> None:
  if stored is None or current is None or stored == current:
    return  # a workdir written before sources were recorded cannot be compared
  changed = sorted(name for name in stored.keys() | current.keys()
                   if stored.get(name) != current.get(name))
  if resume_on_new_data:
    logging.warning("resuming on changed data (data.resume_on_new_data): %s", ", ".join(changed))
    return
  def change(name):
    if name not in stored:
      return "not in the run"
    if name not in current:
      return "gone"
    return f"sha256 {stored[name][:12]} in the run, {current[name][:12]} now"
  what = "; ".join(f"{name}: {change(name)}" for name in changed)
  raise ConfigError(f"config.data.source: the training data changed since the run started "
                    f"({what}; {path}): its data position would index other rows. Restore the "
                    f"files, start a fresh workdir, or set --config.data.resume_on_new_data=true "
                    f"to continue on the new data")
