"""Shared test helpers without torch: the repository root and configs, drafters derived from a
model, packed batches, notebook execution. Those that need torch and transformers are
`tests/hf_helpers.py`."""

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pard_jax.model import create_model

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(path="configs/tiny.py"):
  """`get_config()` of a config file, relative to the repository root."""
  spec = importlib.util.spec_from_file_location("config_module", ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


# A small, fast version of configs/tiny.py for train.py runs (40 steps, a checkpoint every 5).
TINY_RUN = {"data.length": 48, "model.arch.hidden_size": 64, "model.arch.intermediate_size": 128,
            "model.arch.head_dim": 16, "train.num_steps": 40, "train.checkpoint_every": 5,
            "train.log_every": 5, "train.max_checkpoints": 2}


def train_command(workdir, overrides=TINY_RUN) -> list[str]:
  """`train.py --config=configs/tiny.py --workdir=...` with `--config.KEY=VALUE` overrides."""
  return [sys.executable, str(ROOT / "train.py"), "--config=configs/tiny.py",
          f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides.items()]


def tiny_train_config(**train_overrides):
  """configs/tiny.py shrunk further (hidden 64, rows of 64 tokens), with `train.*` overrides."""
  config = load_config()
  config.model.arch.update(dict(hidden_size=64, intermediate_size=128, head_dim=16))
  config.data.length = 64
  config.train.update(train_overrides)
  return config


def with_overrides(config, overrides: dict):
  """`config` with dotted keys set (`{"train.num_steps": 4}`), as `--config.KEY=VALUE` would."""
  for key, value in overrides.items():
    section, _, name = key.rpartition(".")
    node = config
    for part in filter(None, section.split(".")):
      node = node[part]
    node[name] = value
  return config


def perturbed(model, scale, seed):
  """A drafter that agrees with `model` often but not always."""
  graphdef, state = nnx.split(model)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  leaves = [x + scale * jnp.std(x) * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))


def resized_vocab(model, vocab_size):
  """`model` with its embedding tables cut or padded (with random rows) to `vocab_size`."""
  resized = create_model(model.config.replace(vocab_size=vocab_size), seed=5)
  _, state = nnx.split(model)
  graphdef, new_state = nnx.split(resized)
  overlap = lambda new, old: new.at[tuple(slice(0, min(a, b)) for a, b in
                                          zip(new.shape, old.shape))].set(
      old[tuple(slice(0, min(a, b)) for a, b in zip(new.shape, old.shape))])
  return nnx.merge(graphdef, jax.tree.map(overlap, new_state, state))


def packed_batch(doc_lengths_per_row, length, seed=0, vocab=50):
  """A `[rows, length]` packed batch like data.pack builds, with random tokens."""
  rng = np.random.default_rng(seed)
  rows = len(doc_lengths_per_row)
  tokens = rng.integers(8, vocab, (rows, length)).astype(np.int32)
  positions = np.zeros((rows, length), np.int32)
  segments = np.zeros((rows, length), np.int32)
  for r, doc_lengths in enumerate(doc_lengths_per_row):
    start = 0
    for segment, n in enumerate(doc_lengths, start=1):
      positions[r, start:start + n] = np.arange(n)
      segments[r, start:start + n] = segment
      start += n
  labels = np.zeros_like(tokens)
  labels[:, :-1] = tokens[:, 1:]
  weights = np.zeros((rows, length), np.float32)
  weights[:, :-1] = (segments[:, 1:] == segments[:, :-1]) & (segments[:, :-1] > 0)
  return dict(tokens=tokens, positions=positions, segment_ids=segments, labels=labels,
              weights=weights)


def execute_notebook(path: pathlib.Path, parameters: dict, timeout: int = 900):
  """Runs a notebook top to bottom in a fresh kernel, from the repository root, with
  `parameters` assigned right after its cell tagged "parameters" (as papermill injects them).
  Raises `nbclient.exceptions.CellExecutionError` naming the first failing cell."""
  import nbclient
  import nbformat
  notebook = nbformat.read(path, as_version=4)
  index = next(i for i, cell in enumerate(notebook.cells)
               if "parameters" in cell.metadata.get("tags", []))
  injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in parameters.items()))
  injected.metadata["tags"] = ["injected-parameters"]
  notebook.cells.insert(index + 1, injected)
  nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                          resources={"metadata": {"path": str(ROOT)}}).execute()
  return notebook
