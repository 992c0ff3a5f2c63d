"""Several processes as one JAX program (`jax.distributed`): train.py and decode.py alike."""

from __future__ import annotations

import dataclasses

from pard_jax.errors import require


@dataclasses.dataclass(frozen=True)
class DistributedSpec:
  """The config's `distributed` fields; one process (the default) initializes nothing."""
  coordinator_address: str = ""  # host:port of process 0
  num_processes: int = 1
  process_id: int = 0

  @classmethod
  def from_config(cls, c) -> "DistributedSpec":
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
    require(is_int(c.num_processes) and c.num_processes >= 1, "distributed.num_processes",
            f"must be an integer >= 1, got {c.num_processes!r}")
    require(is_int(c.process_id) and 0 <= c.process_id < c.num_processes,
            "distributed.process_id",
            f"must be in [0, {c.num_processes}) (distributed.num_processes), got {c.process_id!r}")
    require(c.num_processes == 1 or bool(c.coordinator_address),
            "distributed.coordinator_address",
            f"is required (host:port of process 0) with num_processes={c.num_processes}")
    return cls(str(c.coordinator_address), c.num_processes, c.process_id)


def initialize(spec: DistributedSpec) -> None:
  """Joins the processes before any device is used (a no-op for one process)."""
  if spec.num_processes > 1:
    import jax  # pylint: disable=g-import-not-at-top  (settings stay importable without jax)
    # CPU processes reduce across hosts over gloo; accelerators bring their own collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=spec.coordinator_address,
                               num_processes=spec.num_processes, process_id=spec.process_id)
