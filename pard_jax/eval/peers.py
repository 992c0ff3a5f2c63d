"""Peers measured in the same run: transformers' `generate` and its assisted generation.

They decode the same prompt ids with the same weights (a HF directory, or the GGUF dequantized
by transformers), stop tokens, max_new_tokens and sampling settings, one prompt at a time (the
batch size assisted generation supports), with one untimed warm-up prompt. torch is optional:
only a run that asks for peers imports it.
"""

from __future__ import annotations

import pathlib
import tempfile
import time
from typing import Sequence

from tqdm import tqdm

from pard_jax import checkpoints
from pard_jax import drafter_kinds as kinds
from pard_jax.eval.cells import CellResult
from pard_jax.errors import ConfigError
from pard_jax.eval.spec import EvalSpec

TRANSFORMERS = "transformers"


def load_transformers_model(path: pathlib.Path, dtype: str):
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConfigError("config.peers=transformers needs torch: pip install torch "
                          "(the CPU build is enough)") from e
  torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                 "float16": torch.float16}[dtype]
  if path.is_dir() and checkpoints.DELTA_FIELD in checkpoints.load_hf_config(path):
    # transformers reads whole checkpoints: write the delta's standalone form first.
    with tempfile.TemporaryDirectory() as standalone:
      checkpoints.save_hf(checkpoints.load_model(path), standalone)
      return load_transformers_model(pathlib.Path(standalone), dtype)
  if path.suffix == ".gguf":
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                              dtype=torch_dtype)
  else:
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
  return model.eval()


class TransformersPeer:
  """`generate` (method `ar`) and assisted generation (method `sd`, AR drafter) in PyTorch."""

  def __init__(self, spec: EvalSpec, stop_token_ids: Sequence[int]):
    self.spec = spec
    self.target = load_transformers_model(spec.target, spec.dtype)
    self.drafter = (load_transformers_model(spec.sd_drafter, spec.dtype)
                    if kinds.SD in spec.methods else None)
    self.kwargs = dict(max_new_tokens=spec.max_new_tokens, do_sample=not spec.greedy,
                       pad_token_id=stop_token_ids[0] if stop_token_ids else 0)
    if stop_token_ids:
      self.kwargs["eos_token_id"] = list(stop_token_ids)
    else:
      self.kwargs["min_new_tokens"] = spec.max_new_tokens
    if not spec.greedy:
      self.kwargs.update(temperature=spec.temperature, top_k=spec.top_k or None,
                         top_p=spec.top_p)

  @staticmethod
  def cells(spec: EvalSpec) -> list[tuple[str, int]]:
    """The peer cells of a run: `ar`, and `sd` at each K when the run has `sd` (an AR drafter)."""
    if not spec.peers:
      return []
    return [(kinds.AR, 0)] + [(kinds.SD, k) for k in spec.draft_tokens
                              if kinds.SD in spec.methods]

  def run(self, prompt_set: str, method: str, k: int, prompts: Sequence[Sequence[int]]
          ) -> CellResult:
    import torch  # pylint: disable=g-import-not-at-top

    kwargs = dict(self.kwargs)
    if method == kinds.SD:
      config = self.drafter.generation_config
      config.num_assistant_tokens, config.num_assistant_tokens_schedule = k, "constant"
      config.assistant_confidence_threshold = 0.0  # draft exactly K, as our sd does
      kwargs["assistant_model"] = self.drafter
    torch.manual_seed(self.spec.seed)
    tokens, seconds = 0, 0.0
    with torch.no_grad():
      self.target.generate(torch.tensor([list(prompts[0])]), **kwargs)  # warm-up
      for prompt in tqdm(prompts, desc=f"{prompt_set} {TRANSFORMERS} {method} K={k}",
                         unit="prompt", leave=False):
        start = time.perf_counter()
        out = self.target.generate(torch.tensor([list(prompt)]), **kwargs)
        seconds += time.perf_counter() - start
        tokens += out.shape[1] - len(prompt)
    return CellResult(prompt_set=prompt_set, method=method, num_draft_tokens=k,
                      num_prompts=len(prompts), num_tokens=tokens, seconds=seconds,
                      engine=TRANSFORMERS)
