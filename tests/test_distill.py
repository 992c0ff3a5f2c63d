"""distill.py: the target's answers as ShareGPT jsonl that train.py reads, resumable without
duplicates, evaluation prompts held out."""

import json

import pytest

from pard_jax import checkpoints, data, distillation
from pard_jax.config import ModelConfig
from pard_jax.decoding import DecodeConfig, SpeculativeDecoder
from pard_jax.eval.prompts import MTBench
from pard_jax.errors import ConfigError
from pard_jax.model import create_model
from tests.helpers import ROOT, load_config

QUESTIONS = ["Spell the word river.", "What color is the sky?", "Name a fruit.",
             "Count to three.", "Say hello."]


@pytest.fixture
def config(tmp_path):
  tokenizer = checkpoints.load_tokenizer(ROOT / "data/tiny_tokenizer")
  model_config = ModelConfig(vocab_size=len(tokenizer), max_position_embeddings=256)
  checkpoints.save_hf(create_model(model_config, 0), tmp_path / "target", tokenizer)
  held_out = MTBench().load()[0].text
  (tmp_path / "prompts.jsonl").write_text("".join(
      json.dumps({"prompt": q}) + "\n"
      for q in QUESTIONS[:2] + [held_out] + QUESTIONS[2:] + ["say  Hello. "]))  # a repeat
  c = load_config("configs/distill.py")
  c.update(dict(target=str(tmp_path / "target"), source=str(tmp_path / "prompts.jsonl"),
                max_new_tokens=6, batch_size=2, output=str(tmp_path / "out" / "distilled.jsonl")))
  return c


def _lines(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_distilled_data_resumes_without_duplicates_and_trains(config, tmp_path):
  output = distillation.run(config)
  first = _lines(output)
  assert len(first) == 5  # the MT-Bench question is held out, the repeat dropped
  assert sorted(line["conversations"][0]["value"] for line in first) == sorted(QUESTIONS)
  # The answers are the target's own greedy continuations.
  tokenizer = checkpoints.load_tokenizer(tmp_path / "target")
  target = checkpoints.load_model(tmp_path / "target")
  line = first[0]
  prompt = tokenizer.apply_chat_template([{"role": "user", "content": line["conversations"][0]
                                           ["value"]}], add_generation_prompt=True,
                                         return_dict=False)
  answer = SpeculativeDecoder(target, None, DecodeConfig(max_new_tokens=6)).generate([prompt])
  assert line["conversations"][1]["value"] == tokenizer.decode(answer.output_ids[0],
                                                               skip_special_tokens=True)

  # A run killed mid-write: two whole lines and a torn third.
  text = output.read_text().splitlines(keepends=True)
  output.write_text("".join(text[:2]) + text[2][:10])
  distillation.run(config)
  resumed = _lines(output)
  assert resumed[:2] == first[:2]
  assert sorted(l["id"] for l in resumed) == sorted(l["id"] for l in first)  # no duplicates
  assert distillation.run(config) == output and _lines(output) == resumed  # nothing left to do

  docs = data.tokenize_records(data.load_records(str(output)), tokenizer, True)
  assert len(docs) == 5 and all(mask.any() for _, mask in docs)


def test_settings_name_files_as_reports_do(config):
  """The record beside committed answers names no path of this machine: files in the checkout
  relative to it (a rerun from elsewhere appends), others absolute."""
  config.source = str(ROOT / "data/tiny_chat.jsonl")
  recorded = distillation.settings(config, ROOT / "drafters/smollm2_135m_pard")
  assert recorded["source"] == "data/tiny_chat.jsonl"
  assert recorded["target"] == "drafters/smollm2_135m_pard"
  config.source = "sharegpt"
  assert distillation.settings(config, ROOT)["source"] == "sharegpt"


def test_bad_values_fail_before_loading(config, tmp_path):
  config.source = "mtbench"
  with pytest.raises(ConfigError, match="config.source: unknown source 'mtbench'; known: "
                     "sharegpt"):
    distillation.run(config)
  config.source, config.output = "sharegpt", ""
  with pytest.raises(ConfigError, match="config.output: is required"):
    distillation.run(config)


def test_a_rerun_after_the_prompts_file_was_edited_is_refused(config, tmp_path):
  """Answers are keyed by `file:line`: prepending prompts would leave some unanswered, others
  answered twice and ids pointing at other prompts."""
  distillation.run(config)
  source = tmp_path / "prompts.jsonl"
  source.write_text(json.dumps({"prompt": "Name a color."}) + "\n" + source.read_text())
  with pytest.raises(ConfigError, match=r"config.output: .* other settings \(source_sha256: "
                     r".*prompts file was edited.*--config.output="):
    distillation.run(config)


def test_prompts_of_an_exclude_file_are_kept_out(config, tmp_path):
  """A training run's held-out prompts (`exclude`) get no answer to train on."""
  (tmp_path / "held_out.jsonl").write_text(json.dumps({"prompt": "Name a  fruit."}) + "\n")
  config.exclude = str(tmp_path / "held_out.jsonl")
  tokenizer = checkpoints.load_tokenizer(config.target)
  chosen = [p.text for p, _ in distillation.select_prompts(config, tokenizer)]
  assert "Name a fruit." not in chosen and "Count to three." in chosen
  config.exclude = str(tmp_path / "missing.jsonl")
  with pytest.raises(ConfigError, match="config.exclude: '.*missing.jsonl' is not a .jsonl "
                     "file of prompts"):
    distillation.run(config)
