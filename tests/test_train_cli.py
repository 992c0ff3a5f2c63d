"""train.py end to end: bad values fail fast, and a killed run resumes to identical parameters."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pard_jax import checkpoints
from pard_jax.train import loop

from tests.helpers import ROOT, load_config

# A small, fast version of configs/tiny.py (100 steps, a checkpoint every 5).
OVERRIDES = {"data.length": 48, "model.arch.hidden_size": 64, "model.arch.intermediate_size": 128,
             "model.arch.head_dim": 16, "train.num_steps": 100, "train.checkpoint_every": 5,
             "train.log_every": 5, "train.max_checkpoints": 2}


def train_command(workdir, overrides=OVERRIDES):
  return [sys.executable, str(ROOT / "train.py"), "--config=configs/tiny.py",
          f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides.items()]


def finished_steps(workdir: pathlib.Path) -> list[int]:
  directory = workdir / "checkpoints"
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) \
      if directory.exists() else []


def test_bad_value_fails_before_training(tmp_path):
  result = subprocess.run(train_command(tmp_path, {"pard.r_min": 1.5}), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "config.pard.r_min: must be in [0, 1], got 1.5" in result.stderr
  assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
  killed = tmp_path / "killed"
  process = subprocess.Popen(train_command(killed), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while time.time() < deadline and not [s for s in finished_steps(killed) if s >= 10]:
    assert process.poll() is None, "the run ended before it could be killed"
    time.sleep(0.02)
  os.kill(process.pid, signal.SIGKILL)
  process.wait()
  interrupted_at = finished_steps(killed)[-1]
  assert 10 <= interrupted_at < 100 and not (killed / "hf").exists()

  resumed = subprocess.run(train_command(killed), cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resumed from step {interrupted_at}" in resumed.stderr

  config = load_config("configs/tiny.py")
  for key, value in OVERRIDES.items():
    section, _, name = key.rpartition(".")
    node = config
    for part in section.split("."):
      node = node[part]
    node[name] = value
  reference = tmp_path / "reference"
  loop.train(config, str(reference))
  logged = lambda workdir: [json.loads(line)["step"]
                            for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert logged(killed) == logged(reference) == list(range(5, 101, 5))  # no rows twice
  got = checkpoints.read_safetensors(killed / "hf" / "model.safetensors")
  want = checkpoints.read_safetensors(reference / "hf" / "model.safetensors")
  assert got.keys() == want.keys()
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)
