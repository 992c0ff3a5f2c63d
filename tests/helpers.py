"""Shared test helpers without torch: the repository root and configs, drafters derived from a
model, packed batches, exact sampling distributions and the chi-square test, notebook
execution. Those that need torch and transformers are
`tests/hf_helpers.py`."""

import importlib.util
import itertools
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from flax import nnx

from pard_jax import sampling
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


def feature_drafter(target, feature_layers, num_layers=1, seed=0):
  """A feature drafter over `target`: its first `num_layers` layers, embedding and head,
  perturbed, reading `feature_layers` through a random (not zero) projection, so that the
  features matter."""
  config = target.config.replace(
      num_layers=num_layers, feature_size=len(feature_layers) * target.config.hidden_size,
      num_feature_layers=len(feature_layers))
  drafter = create_model(config, seed)
  _, target_state = nnx.split(target)
  graphdef, state = nnx.split(drafter)
  flat = dict(nnx.to_flat_state(state))
  for path, value in nnx.to_flat_state(target_state):
    if path in flat and not (path[0] == "layers" and path[1] >= num_layers):
      flat[path] = value
  drafter = perturbed(nnx.merge(graphdef, nnx.from_flat_state(flat)), 0.2, seed)
  key = jax.random.key(seed + 7)
  drafter.features.feature_proj.kernel[...] = 0.5 * jax.random.normal(
      key, drafter.features.feature_proj.kernel.shape) / np.sqrt(config.feature_size)
  return drafter


def without_features(drafter):
  """The same weights without the feature input: the token-only (PARD-1) drafter."""
  plain = create_model(drafter.config.replace(feature_size=0, num_feature_layers=0))
  _, state = nnx.split(drafter)
  graphdef, plain_state = nnx.split(plain)
  flat = {path: value for path, value in nnx.to_flat_state(state) if path[0] != "features"}
  assert set(flat) == set(dict(nnx.to_flat_state(plain_state)))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


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
  """A `[rows, length]` packed batch like packing.pack builds, with random tokens."""
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


def exact_distribution(model, prompt, steps, top_k=0):
  """P(first `steps` tokens) at temperature 1 by enumerating every continuation:
  `[vocab] * steps` (tiny vocabularies only)."""
  vocab = model.config.vocab_size
  probs = np.ones([vocab] * steps)
  for prefix in itertools.product(range(vocab), repeat=steps - 1):
    seq = jnp.asarray([prompt + list(prefix)])
    logits, _ = model(seq, jnp.arange(seq.shape[1])[None])
    p = np.asarray(sampling.probs_from_logits(logits[0, len(prompt) - 1:], 1.0, top_k=top_k))
    # P(x_1..x_n) = prod_t p(x_t | prompt, x_<t); row t of `p` conditions on prefix[:t].
    head = np.prod([p[t, prefix[t]] for t in range(steps - 1)])
    probs[prefix] = head * p[steps - 1]
  return probs


def chi_square_pvalue(samples, expected_probs):
  """Goodness of fit of sampled sequences `[n, steps]` to `exact_distribution`'s table."""
  counts = np.zeros(expected_probs.size)
  np.add.at(counts, np.ravel_multi_index(samples.T, expected_probs.shape), 1)
  expected = expected_probs.ravel() * len(samples)
  big = expected >= 5  # merge sparse cells so the chi-square approximation holds
  observed = np.append(counts[big], counts[~big].sum())
  expected = np.append(expected[big], expected[~big].sum())
  keep = expected > 0
  expected = expected * observed.sum() / expected.sum()  # float32 probabilities sum to ~1
  return scipy.stats.chisquare(observed[keep], expected[keep]).pvalue
