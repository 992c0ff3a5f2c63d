"""Held-out acceptance (`pard_jax.train.heldout`): read off the full training layout, it is the
greedy decoding loop's acceptance, iteration by iteration, for every drafter kind; a held-out
source that is also training data is refused. (A run's heldout.jsonl: `test_training`.)"""

import jax
import numpy as np
import pytest
from flax import nnx

from pard_jax import drafter_kinds as kinds
from pard_jax.errors import ConfigError, DataError
from pard_jax.model import create_model
from pard_jax.train import heldout, loop
from pard_jax.train import settings as train_settings
from pard_jax.train.spec import TrainSpec
from tests.helpers import ROOT, feature_drafter, perturbed, tiny_train_config, without_features
from tests.test_feature_drafters import KINDS, LAYERS, MASKS, TARGET, generate

K = 4


def close_drafter(target):
  """A 3-layer feature drafter near `target` (its weights, slightly perturbed, a faint random
  feature projection): it accepts 0 to K drafts, so every run length occurs."""
  drafter = feature_drafter(target, LAYERS, num_layers=TARGET.num_layers, seed=1)
  graphdef, state = nnx.split(drafter)
  flat = dict(nnx.to_flat_state(state))
  flat.update(nnx.to_flat_state(nnx.split(target)[1]))
  drafter = perturbed(nnx.merge(graphdef, nnx.from_flat_state(flat)), 0.03, 3)
  kernel = drafter.features.feature_proj.kernel
  kernel[...] = 0.002 * jax.random.normal(jax.random.key(9), kernel.shape)
  return drafter


def text_batch(prompts, outputs):
  """Prompt + greedy output rows, the output's tokens the loss targets (as `distill.py` data)."""
  length = max(len(p) + len(o) for p, o in zip(prompts, outputs))
  batch = {k: np.zeros((len(prompts), length), np.int32)
           for k in ("tokens", "positions", "segment_ids", "labels")}
  batch["weights"] = np.zeros((len(prompts), length), np.float32)
  for row, (prompt, output) in enumerate(zip(prompts, outputs)):
    sequence = prompt + output
    n = len(sequence)
    batch["tokens"][row, :n] = sequence
    batch["positions"][row, :n] = np.arange(n)
    batch["segment_ids"][row, :n] = 1
    batch["labels"][row, :n - 1] = sequence[1:]
    batch["weights"][row, len(prompt) - 1:n - 1] = 1
  return batch


@pytest.mark.parametrize("method", ["pard", "parallelspec", "sd", "pard-tokens"])
def test_heldout_acceptance_is_the_decoding_loops(method):
  target = create_model(TARGET, 0)
  drafter, kind = close_drafter(target), KINDS[method.split("-")[0]]
  if method == "pard-tokens":
    # Without the faint features the copy's first draft is always right: perturb it more.
    drafter = perturbed(without_features(drafter), 0.3, 4)
    kind = kinds.PardDrafter(MASKS["pard"][0])
  prompts = [[1, 2, 3, 4], [5], [6, 7], [8, 9, 10]]
  out = generate(target, drafter, kind, prompts, num_draft_tokens=K, max_new_tokens=24)
  batch = text_batch(prompts, out.output_ids)
  masks = MASKS["pard"] * (K - 1) if method.startswith("pard") else MASKS[method] or (0,) * 3
  step_cfg = heldout.full_layout(train_settings.StepConfig(
      counts=(1,) * K, mask_tokens=masks, feature_layers=kind.feature_layers,
      autoregressive=method == "sd", feature_dropout=0.5), batch["tokens"].shape[1])
  t_graphdef, t_params = nnx.split(target)
  graphdef, params = nnx.split(drafter)
  right_BxKxA, counted_BxA = jax.jit(lambda p, b, t: heldout.anchor_acceptance(
      p, b, t, graphdef=graphdef, step_cfg=step_cfg, teacher_graphdef=t_graphdef))(
          params, batch, t_params)
  accepted_BxA = np.cumprod(np.asarray(right_BxKxA), axis=1).sum(axis=1)
  compared, seen = 0, set()
  for row, (prompt, per_iteration) in enumerate(zip(prompts, out.accepted_drafts)):
    anchor = len(prompt) - 1  # the prompt's last token is pending: iteration 1 drafts from it
    end = len(prompt) + len(out.output_ids[row])
    for accepted in per_iteration:
      # Past max_new_tokens the loop accepts drafts the text no longer holds.
      if anchor + K < end:
        assert counted_BxA[row, anchor]
        assert accepted_BxA[row, anchor] == accepted, (row, anchor)
        compared += 1
        seen.add(accepted)
      anchor += accepted + 1
  assert compared >= 12 and len(seen) >= 2, (compared, seen)


def test_heldout_rows_that_are_training_data_are_refused(tmp_path, no_model_loading):
  """By name at once; by content (the same document under another file name) before any model
  loads."""
  config = tiny_train_config()
  config.heldout.source = config.data.source
  with pytest.raises(ConfigError, match=r"config.heldout.source: .*tiny_chat.jsonl is also in "
                                        r"data.source"):
    TrainSpec.from_config(config)
  config.heldout.update(dict(source="elsewhere.jsonl", max_rows=-1))
  with pytest.raises(ConfigError, match=r"config.heldout.max_rows: must be an integer >= 0"):
    TrainSpec.from_config(config)
  copy = tmp_path / "copy.jsonl"
  copy.write_text("".join((ROOT / "data/tiny_chat.jsonl").read_text().splitlines(True)[-5:]))
  config.heldout.update(dict(source=str(copy), max_rows=0))
  with pytest.raises(DataError, match=r"config.heldout.source: \d+ of its documents are also in "
                                      r"data.source"):
    loop.train(config, str(tmp_path / "run"))
