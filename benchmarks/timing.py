"""What the benchmarks share to time a jitted call: compile once, then the best of N calls."""

from __future__ import annotations

import time
from typing import Any, Callable

import jax


def best_seconds(fn: Callable[..., Any], *args, repeats: int) -> float:
  """The fastest of `repeats` calls of `fn(*args)`, after one untimed call (compilation)."""
  jax.block_until_ready(fn(*args))
  samples = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    samples.append(time.perf_counter() - start)
  return min(samples)
