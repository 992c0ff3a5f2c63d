"""decode.py end to end: config contract, prompts/outputs files, summary, errors; and the real
SmolLM2 model's greedy output against transformers' `generate`."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pard_jax import checkpoints, decode_job
from pard_jax.config import ModelConfig
from pard_jax.decoding import DecodeConfig, DecodeError, SpeculativeDecoder
from pard_jax.drafting import DraftConfigError
from pard_jax.model import create_model
from tests.hf_models import save_hf_model
from tests.test_decoding import perturbed, resized_vocab
from tests.test_training import ROOT, load_config


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """A tiny target and a PARD drafter (perturbed copy with pard_token) as HF directories."""
  root = tmp_path_factory.mktemp("models")
  save_hf_model("smollm2", root / "target")
  target = checkpoints.load_model(root / "target")
  checkpoints.save_hf(perturbed(target, 0.2, 0), root / "drafter",
                      extra_config={"pard_token": 95, "spd_type": "pard"})
  prompts = root / "prompts.jsonl"
  rng = np.random.default_rng(0)
  prompts.write_text("".join(json.dumps({"input_ids": rng.integers(0, 90, n).tolist()}) + "\n"
                             for n in (3, 9, 1, 5, 17)))
  return root


def _config(models, **overrides):
  config = load_config("configs/decode.py")
  config.target = str(models / "target")
  config.drafter = str(models / "drafter")
  config.prompts = str(models / "prompts.jsonl")
  config.max_new_tokens = 12
  config.stop_token_ids = ()
  config.update(overrides)
  return config


def test_pard_job_writes_outputs_in_order_and_matches_ar(models, tmp_path):
  output = tmp_path / "out.jsonl"
  summaries, records = decode_job.run(_config(models, method="pard", num_draft_tokens=4,
                                              batch_size=3, compare_ar=True, output=str(output)))
  pard, ar = summaries
  assert pard.matches_ar is True and pard.speedup_vs_ar > 0
  assert (pard.method, pard.num_prompts, pard.num_tokens) == ("pard", 5, 60)
  assert 1 <= pard.tau <= 5
  lines = [json.loads(line) for line in output.read_text().splitlines()]
  assert lines == records and len(lines) == 5
  for line in lines:
    assert set(line) >= {"output_ids", "text", "accept_lengths", "num_iterations", "seconds"}
    assert len(line["output_ids"]) == 12 and sum(line["accept_lengths"]) == 12
    assert line["num_iterations"] == len(line["accept_lengths"])
  # Each prompt alone gives the same ids as inside its (padded) batch.
  prompts = [json.loads(l)["input_ids"] for l in (models / "prompts.jsonl").read_text().splitlines()]
  target = checkpoints.load_model(models / "target")
  solo = SpeculativeDecoder(target, None, DecodeConfig(max_new_tokens=12)).generate([prompts[3]])
  assert lines[3]["output_ids"] == solo.output_ids[0]
  assert "speedup" in decode_job.format_table(summaries)


def test_decode_cli_runs(models, tmp_path):
  output = tmp_path / "cli.jsonl"
  proc = subprocess.run(
      [sys.executable, "decode.py", "--config=configs/decode.py",
       f"--config.target={models / 'target'}", f"--config.drafter={models / 'drafter'}",
       f"--config.prompts={models / 'prompts.jsonl'}", "--config.method=sd",
       "--config.num_draft_tokens=3", "--config.max_new_tokens=5", "--config.temperature=0.7",
       "--config.top_p=0.9", f"--config.output={output}", "--config.stop_token_ids=()"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "tau" in proc.stdout and "sd" in proc.stdout
  assert [len(json.loads(l)["output_ids"]) for l in output.read_text().splitlines()] == [5] * 5


def test_job_errors_are_clear(models, tmp_path):
  with pytest.raises(FileNotFoundError, match="prompts file not found"):
    decode_job.run(_config(models, prompts=str(tmp_path / "missing.jsonl")))
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"input_ids": [1, 2]}\n{"question": "hi"}\n')
  with pytest.raises(DecodeError, match=r"bad.jsonl:2: a line needs"):
    decode_job.run(_config(models, prompts=str(bad)))
  with pytest.raises(DecodeError, match="needs --config.drafter"):
    decode_job.run(_config(models, method="sd", drafter=""))
  with pytest.raises(DraftConfigError, match="not a PARD checkpoint"):
    decode_job.run(_config(models, method="pard", drafter=str(models / "target")))
  with pytest.raises(DecodeError, match="needs a cache of"):
    decode_job.run(_config(models, max_new_tokens=300))
  with pytest.raises(DecodeError, match="batch_size"):
    decode_job.run(_config(models, batch_size=0))


def test_drafter_with_padded_vocabulary_and_same_tokenizer(tmp_path):
  tokenizer = checkpoints.load_tokenizer(ROOT / "data/tiny_tokenizer")
  target = create_model(ModelConfig(vocab_size=len(tokenizer), max_position_embeddings=256), 0)
  checkpoints.save_hf(target, tmp_path / "target", tokenizer)
  checkpoints.save_hf(resized_vocab(perturbed(target, 0.2, 0), len(tokenizer) + 8),
                      tmp_path / "drafter", tokenizer,
                      extra_config={"pard_token": 4, "spd_type": "pard"})
  checkpoints.save_hf(create_model(ModelConfig(vocab_size=len(tokenizer) + 8)),
                      tmp_path / "stranger")  # no tokenizer
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text('{"prompt": "Spell the word river."}\n')
  (pard, _), _ = decode_job.run(_config(tmp_path, method="pard", num_draft_tokens=3,
                                        compare_ar=True))
  assert pard.matches_ar
  with pytest.raises(DecodeError, match="tokenizers are missing or not the same"):
    decode_job.run(_config(tmp_path, method="sd", drafter=str(tmp_path / "stranger")))


CHATS = ["What is the capital of France?", "Name three primary colors.",
         "Write a haiku about the sea."]


def test_real_smollm2_greedy_equals_transformers_generate(smollm2, smollm2_hf):
  _, model, tokenizer = smollm2
  prompts = [tokenizer.apply_chat_template([{"role": "user", "content": c}],
                                           add_generation_prompt=True, return_dict=False)
             for c in CHATS]
  new = 20
  expected = []
  with torch.no_grad():
    for prompt in prompts:
      out = smollm2_hf.generate(torch.tensor([prompt]), max_new_tokens=new, do_sample=False,
                                eos_token_id=2, pad_token_id=2)
      expected.append(out[0, len(prompt):].tolist())
  for method in ("ar", "sd"):
    result = SpeculativeDecoder(model, model if method == "sd" else None,
                                DecodeConfig(method=method, num_draft_tokens=4,
                                             max_new_tokens=new, stop_token_ids=(2,))
                                ).generate(prompts)
    assert result.output_ids == expected, method
  assert "Paris" in tokenizer.decode(expected[0])
