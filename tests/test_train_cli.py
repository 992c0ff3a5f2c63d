"""train.py end to end: a killed run resumes to identical parameters, and two processes
(jax.distributed on localhost) train, checkpoint and resume like one. (A bad value failing fast
as one line: tests/test_cli.py.)"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from pard_jax import checkpoints
from pard_jax.train import loop

from tests.helpers import ROOT, TINY_RUN, load_config, train_command, with_overrides

def finished_steps(workdir: pathlib.Path) -> list[int]:
  directory = workdir / "checkpoints"
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) \
      if directory.exists() else []


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
  assert 10 <= interrupted_at < 40 and not (killed / "hf").exists()

  resumed = subprocess.run(train_command(killed), cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resumed from step {interrupted_at}" in resumed.stderr

  reference = tmp_path / "reference"
  loop.train(with_overrides(load_config("configs/tiny.py"), TINY_RUN), str(reference))
  assert logged(killed) == logged(reference) == list(range(5, 41, 5))  # no rows twice
  assert_same_weights(killed, reference)


def logged(workdir, key="step"):
  return [json.loads(line)[key] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(workdir, reference, rtol=1e-5, atol=1e-6):
  got = checkpoints.read_safetensors(workdir / "hf" / "model.safetensors")
  want = checkpoints.read_safetensors(reference / "hf" / "model.safetensors")
  assert got.keys() == want.keys()
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.slow
def test_two_processes_train_checkpoint_and_resume_like_one(tmp_path):
  # A constant schedule, so that 3 steps then 3 more equal 6 in one go.
  overrides = {**TINY_RUN, "train.schedule": "constant", "train.warmup_steps": 0,
               "train.checkpoint_every": 3, "train.log_every": 3}
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  workdir = tmp_path / "two_processes"
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  for steps in (3, 6):  # the second run restores the first one's checkpoint
    processes = [subprocess.Popen(
        train_command(workdir, {**overrides, "train.num_steps": steps,
                                "distributed.coordinator_address": f"localhost:{port}",
                                "distributed.num_processes": 2, "distributed.process_id": i}),
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for i in (0, 1)]
    errors = [p.communicate(timeout=300)[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], errors[0][-3000:] + errors[1][-3000:]
  assert "resumed from step 3" in errors[0] and "resumed from step 3" in errors[1]

  reference = tmp_path / "one_process"  # 8 devices in this process, as 2 x 4 above
  loop.train(with_overrides(load_config("configs/tiny.py"),
                                {**overrides, "train.num_steps": 6}), str(reference))
  assert logged(workdir) == logged(reference) == [3, 6]
  np.testing.assert_allclose(logged(workdir, "loss"), logged(reference, "loss"), rtol=1e-5)
  assert_same_weights(workdir, reference, rtol=1e-4, atol=1e-5)
