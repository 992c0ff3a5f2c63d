"""What a run logs: metrics.jsonl, TensorBoard event files and the progress bar."""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from typing import Any

import jax
import tensorboardX
from absl import logging


class NonFinite(FloatingPointError):
  """Step `step` gave a non-finite value, `what` (e.g. "loss is nan"). `from_previous_state`:
  the value is the loss or gradient norm, computed from the state the step started from before
  any learning rate applies, so that state leads to it whatever the learning rate."""

  def __init__(self, step: int, what: str, from_previous_state: bool):
    super().__init__(f"{what} at step {step}")
    self.step, self.from_previous_state = step, from_previous_state


class MetricsLog:
  """Checks every step's loss and gradient norm (`NonFinite`); every `log_every` steps writes
  metrics.jsonl, TensorBoard event files (`workdir/tensorboard`, via tensorboardX) and the
  progress bar."""

  def __init__(self, workdir: pathlib.Path, tokens_per_step: int, log_every: int, bar,
               is_main: bool, start_step: int):
    self.path, self.heldout_path = workdir / "metrics.jsonl", workdir / "heldout.jsonl"
    self.tokens_per_step, self.log_every, self.bar, self.is_main = (
        tokens_per_step, log_every, bar, is_main)
    self.last_time, self.last_step = time.perf_counter(), None
    self.history: list[dict[str, Any]] = []
    for path in (self.path, self.heldout_path):
      if is_main and path.exists():
        # Rows logged after the checkpoint we resume from are logged again: drop them.
        kept = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= start_step]
        path.write_text("".join(line + "\n" for line in kept))
    # purge_step makes TensorBoard drop what an interrupted run logged past the checkpoint.
    self.writer = (tensorboardX.SummaryWriter(str(workdir / "tensorboard"),
                                              purge_step=start_step + 1) if is_main else None)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()

  def heldout(self, step: int, result: dict[str, Any]) -> None:
    """A held-out evaluation (`heldout.summary`): a line beside the bar, heldout.jsonl and
    TensorBoard (`heldout/tau`, `heldout/accepted_i`: accepted >= i drafts)."""
    if not self.is_main:
      return
    accepted = " ".join(f"{x:.2f}" for x in result["accepted"])
    self.bar.write(f"step {step}: held-out tau {result['tau']:.3f}, accepted >= i drafts "
                   f"{accepted} ({result['anchors']} positions)", file=sys.stderr)
    with open(self.heldout_path, "a") as f:
      f.write(json.dumps(dict(step=step, **result)) + "\n")
    self.writer.add_scalar("heldout/tau", result["tau"], step)
    for i, value in enumerate(result["accepted"], start=1):
      self.writer.add_scalar(f"heldout/accepted_{i}", value, step)
    self.writer.flush()

  def __call__(self, step: int, metrics) -> None:
    metrics = jax.device_get(metrics)
    loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
    for name, value in (("loss", loss), ("grad_norm", grad_norm)):
      if not math.isfinite(value):
        raise NonFinite(step, f"{name} is {value}", from_previous_state=True)
    self.bar.update(1)
    if self.last_step is None:
      self.last_step = step - 1
    if step % self.log_every:
      return
    now = time.perf_counter()
    record = dict(step=step, loss=loss, grad_norm=grad_norm,
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
