"""Orbax checkpoints of a run: the train state and the data position, and quieter orbax logs."""

from __future__ import annotations

import logging as std_logging
import pathlib

import jax
import orbax.checkpoint as ocp
from absl import logging


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
