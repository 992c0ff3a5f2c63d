"""The SmolLM2-135M-Instruct job: the shipped GGUF as target with the two drafters trained here
side by side, the feature drafter (`drafters/smollm2_135m_feature_kl`, reading the target's
hidden states) and the token-only PARD-1 cut (`drafters/smollm2_135m_pard`), each as `pard`
against `ar`. SmolLM2 has no smaller sibling, so both are grown from the target itself.

  python decode.py --config=configs/decode_smollm2.py

Every other setting is `configs/decode.py`'s.
"""

from configs import ROOT
from configs import decode
from pard_jax.checkpoints import assets


def get_config():
  config = decode.get_config()
  config.target = assets.SMOLLM2_GGUF
  config.drafter = (f"feature={ROOT / 'drafters/smollm2_135m_feature_kl'},"
                    f"cut={ROOT / 'drafters/smollm2_135m_pard'}")
  config.sd_drafter = ""
  config.method = "ar,pard"
  return config
