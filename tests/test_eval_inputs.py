"""decode.py's inputs and outputs: nothing lost, nothing silently wrong (issue 19).

Outputs never overwrite inputs; a report folder keys its cells by the prompts' path and content
and by every setting, is locked while a sweep writes it, serves subsets of what it holds and
refuses what does not fit; every prompt and setting is checked against the checkpoints'
config.json before a model loads; `output` is written cell by cell.
"""

import json
import shutil
import signal
import subprocess
import sys

import pytest

from pard_jax import checkpoints
from pard_jax.config import ModelConfig
from pard_jax.errors import CheckpointError, ConfigError, DataError
from pard_jax.eval import cells, job
from pard_jax.eval.spec import EvalSpec
from pard_jax.model import create_model
from tests.helpers import ROOT, load_config

NEW = 4
TEXTS = ["Hi there.", "Spell the word river.", "Count to three."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """`H`: a tiny target with the tiny tokenizer (256 positions); `P`: it as a PARD drafter;
  `p3.jsonl`: 3 text prompts; `p5.jsonl`: 5 id prompts."""
  root = tmp_path_factory.mktemp("tiny")
  tokenizer = checkpoints.load_tokenizer(ROOT / "data/tiny_tokenizer")
  model = create_model(ModelConfig(vocab_size=len(tokenizer), max_position_embeddings=256), 0)
  checkpoints.save_hf(model, root / "H", tokenizer)
  checkpoints.save_hf(model, root / "P", tokenizer,
                      extra_config={"pard_token": 4, "spd_type": "pard"})
  (root / "p3.jsonl").write_text("".join(json.dumps({"prompt": t}) + "\n" for t in TEXTS))
  (root / "p5.jsonl").write_text("".join(json.dumps({"input_ids": [5, 6, 7 + i]}) + "\n"
                                         for i in range(5)))
  return root


def _config(root, **overrides):
  """`D` of the issue: configs/decode.py with its defaults (max_prompts included)."""
  config = load_config("configs/decode.py")
  config.update(dict(target=str(root / "H"), drafter=str(root / "H"), method="ar",
                     prompts=str(root / "p3.jsonl"), max_new_tokens=NEW, sd_drafter=""))
  config.update(overrides)
  return config


@pytest.fixture
def decoded(monkeypatch):
  """The (set, method, K) of every cell decoded from here on."""
  ran = []
  real_run_cell = cells.run_cell
  def run_cell(decoder, *args, desc="", **kwargs):
    ran.append(desc)
    return real_run_cell(decoder, *args, desc=desc, **kwargs)
  monkeypatch.setattr(cells, "run_cell", run_cell)
  return ran


def _copy(tiny, tmp_path, name="H"):
  shutil.copytree(tiny / name, tmp_path / name)
  return tmp_path / name


# 1. An output that is an input, or one of the report's own files, is refused.

@pytest.mark.parametrize("case", ["output_is_prompts", "output_is_results_json",
                                  "output_in_report_outputs", "output_is_target_file",
                                  "prompts_in_report_outputs"])
def test_an_output_that_is_an_input_or_the_report_is_refused(tiny, tmp_path, no_model_loading,
                                                            case):
  prompts_file = tmp_path / "x.jsonl"
  shutil.copy(tiny / "p3.jsonl", prompts_file)
  report_dir = tmp_path / "R"
  overrides, message = {
      # Spelled differently: paths are compared resolved.
      "output_is_prompts": (dict(output=str(tmp_path / "sub" / ".." / "x.jsonl")),
                            r"config.output: .*x.jsonl would overwrite .*x.jsonl, an input "
                            r"\(config.prompts\)"),
      "output_is_results_json": (dict(output=str(report_dir / "results.json"),
                                      report_dir=str(report_dir)),
                                 r"config.output: .*results.json is one of the report's own "
                                 r"files \(config.report_dir"),
      "output_in_report_outputs": (dict(output=str(report_dir / "outputs/x/a.jsonl"),
                                        report_dir=str(report_dir)),
                                   "config.output: .* is one of the report's own files"),
      "output_is_target_file": (dict(output=str(tiny / "H" / "config.json")),
                                r"config.output: .*config.json would overwrite .*H, an input "
                                r"\(config.target\)"),
      "prompts_in_report_outputs": (dict(prompts=str(report_dir / "outputs/x.jsonl"),
                                         report_dir=str(report_dir)),
                                    r"config.report_dir: .*outputs would overwrite .*x.jsonl, "
                                    r"an input \(config.prompts\)"),
  }[case]
  if case == "prompts_in_report_outputs":
    (report_dir / "outputs").mkdir(parents=True)
    shutil.copy(tiny / "p3.jsonl", report_dir / "outputs/x.jsonl")
  before = prompts_file.read_text()
  with pytest.raises(ConfigError, match=message):
    job.run(_config(tiny, **{"prompts": str(prompts_file), **overrides}))
  assert prompts_file.read_text() == before
  assert not (report_dir / "results.json").exists()


# 2. A report keys its cells by the prompts' resolved path and content.

def test_a_report_refuses_other_prompts_under_the_same_name(tiny, tmp_path, decoded):
  for folder in ("a", "b"):
    (tmp_path / folder).mkdir()
  shutil.copy(tiny / "p3.jsonl", tmp_path / "a/p3.jsonl")
  (tmp_path / "b/p3.jsonl").write_text('{"prompt": "Something else entirely."}\n')
  report_dir = str(tmp_path / "R")
  job.run(_config(tiny, prompts=str(tmp_path / "a/p3.jsonl"), report_dir=report_dir))
  assert len(decoded) == 1
  rerun = job.run(_config(tiny, prompts=str(tmp_path / "a/p3.jsonl"), report_dir=report_dir))
  assert len(decoded) == 1 and rerun.cells[0].num_prompts == 3  # the same prompts: resumed

  with pytest.raises(ConfigError, match=r"config.report_dir: .* prompt set 'p3' .*1 prompts of "
                     r".*b/p3.jsonl, sha256 \w+ now"):
    job.run(_config(tiny, prompts=str(tmp_path / "b/p3.jsonl"), report_dir=report_dir))
  (tmp_path / "a/p3.jsonl").write_text(json.dumps({"prompt": "edited"}) + "\n" +
                                       (tiny / "p3.jsonl").read_text())
  with pytest.raises(ConfigError, match=r"prompt set 'p3' .*4 prompts of .*a/p3.jsonl"):
    job.run(_config(tiny, prompts=str(tmp_path / "a/p3.jsonl"), report_dir=report_dir))
  # Same first 3 lines, but other ids: the hash, not the count, tells.
  (tmp_path / "a/p3.jsonl").write_text((tiny / "p3.jsonl").read_text().replace("river", "lake"))
  with pytest.raises(ConfigError, match=r"prompt set 'p3' .*sha256"):
    job.run(_config(tiny, prompts=str(tmp_path / "a/p3.jsonl"), report_dir=report_dir))
  with pytest.raises(ConfigError, match=r"other settings \(seed: 0 there, 1 now"):
    job.run(_config(tiny, prompts=str(tmp_path / "a/p3.jsonl"), report_dir=report_dir,
                    seed=1))
  assert len(decoded) == 1


# 5. A report folder is locked while a sweep writes it; a crashed sweep's lock is taken over.

@pytest.mark.slow
def test_a_report_dir_is_locked_and_a_stale_lock_is_taken_over(tiny, tmp_path, decoded):
  report_dir = tmp_path / "R"
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time\nfrom pard_jax.eval import report\n"
       "with report.locked(__import__('pathlib').Path(sys.argv[1])):\n"
       "  print('held', flush=True); time.sleep(120)", str(report_dir)],
      cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(ConfigError, match=rf"config.report_dir: .*R is in use by another "
                       rf"sweep \(pid {holder.pid} "):
      job.run(_config(tiny, report_dir=str(report_dir)))
    assert not decoded
  finally:
    holder.send_signal(signal.SIGKILL)  # a crash: the lock file stays behind
    holder.wait()
  assert f"pid {holder.pid} " in (report_dir / ".lock").read_text()
  job.run(_config(tiny, report_dir=str(report_dir)))
  assert len(decoded) == 1 and not (report_dir / ".lock").exists()


# 7. configs/decode.py's max_prompts cuts the named sets, not a user's own file.

def test_a_prompt_file_is_decoded_whole_unless_asked_otherwise(tiny, no_model_loading):
  tokenizer = checkpoints.load_tokenizer(tiny / "H")
  spec = EvalSpec.from_config(_config(tiny, prompts=f"gsm8k,{tiny / 'p5.jsonl'}"))
  counts = [len(job.tokenize_set(s, spec, tokenizer)[0]) for s in spec.prompt_sets]
  assert counts == [4, 5]
  spec = EvalSpec.from_config(_config(tiny, prompts=f"gsm8k,{tiny / 'p5.jsonl'}",
                                      max_prompts=2))
  assert [len(job.tokenize_set(s, spec, tokenizer)[0]) for s in spec.prompt_sets] == [2, 2]


def test_the_default_config_decodes_every_prompt_of_a_file(tiny):
  result = job.run(_config(tiny, prompts=str(tiny / "p5.jsonl")))
  assert result.cells[0].num_prompts == 5


# 8. Every prompt of every set is checked first; `output` is written cell by cell.

@pytest.mark.parametrize("line, message", [
    ({"input_ids": [5] * 253}, r"long.jsonl:2: prompt of 253 tokens \+ max_new_tokens=4 needs "
     r"a cache of 257 positions, more than the 256 available"),
    ({"input_ids": [1, 600]}, r"long.jsonl:2: token id 600 is outside the target's vocabulary"),
])
def test_every_prompt_of_every_set_is_checked_before_decoding(tiny, tmp_path, no_model_loading,
                                                               line, message):
  long = tmp_path / "long.jsonl"
  long.write_text(json.dumps({"input_ids": [5, 6]}) + "\n" + json.dumps(line) + "\n")
  with pytest.raises(DataError, match=message):
    job.run(_config(tiny, method="ar,sd", num_draft_tokens=(2,), max_prompts=0,
                    prompts=f"{tiny / 'p5.jsonl'},{long}", output=str(tmp_path / "o.jsonl")))
  assert not (tmp_path / "o.jsonl").exists()


def test_output_keeps_every_finished_cell_when_interrupted(tiny, tmp_path, monkeypatch):
  real_run_cell, calls = cells.run_cell, []
  def interrupted(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
      raise KeyboardInterrupt  # SIGINT during the second cell
    return real_run_cell(*args, **kwargs)
  monkeypatch.setattr(cells, "run_cell", interrupted)
  output = tmp_path / "o.jsonl"
  with pytest.raises(KeyboardInterrupt):
    job.run(_config(tiny, method="ar,sd", num_draft_tokens=(2,), output=str(output)))
  lines = [json.loads(line) for line in output.read_text().splitlines()]
  assert [(l["method"], l["prompt"][-10:]) for l in lines] == [
      ("ar", f"p3.jsonl:{i}") for i in (1, 2, 3)]
  assert all(len(l["output_ids"]) == NEW and isinstance(l["text"], str) for l in lines)


# 9. Settings are checked against the checkpoints' config.json before any weights load.

@pytest.mark.parametrize("overrides, message", [
    (dict(max_new_tokens=100000000), r"config.max_new_tokens: 100000000 .*256"),
    (dict(stop_token_ids=(99999,)),
     r"config.stop_token_ids: 99999 is outside the target's vocabulary \[0, 512\)"),
    (dict(cache_len=100000), r"config.cache_len: 100000 is more than the 256 positions"),
    (dict(cache_len=4), "config.cache_len: 4 positions leave no room for a prompt"),
    (dict(method="ar,pard", mask_token_ids=(99999,)),
     r"config.mask_token_ids: 99999 is outside the drafter's vocabulary \[0, 512\)"),
    (dict(method="ar,parallelspec", mask_token_ids=(7, 8), num_draft_tokens=(4,)),
     "parallelspec with K=4 needs 3 distinct mask ids"),
])
def test_settings_are_checked_against_the_checkpoints_before_loading(tiny, no_model_loading,
                                                                     overrides, message):
  with pytest.raises(ConfigError, match=message):
    job.run(_config(tiny, **overrides))


def test_a_prompt_longer_than_cache_len_names_file_and_line(tiny, no_model_loading):
  with pytest.raises(DataError, match=r"p3.jsonl:\d: prompt of \d+ tokens .* more than the 12 "
                     r"available \(config.cache_len"):
    job.run(_config(tiny, cache_len=12))


# 10. A report folder serves any subset of what it holds and extends it; it never crashes.

@pytest.mark.slow
def test_a_report_dir_serves_subsets_and_extensions(tiny, tmp_path, decoded, monkeypatch):
  report_dir = tmp_path / "R"
  job.run(_config(tiny, method="ar,sd", num_draft_tokens=(2,), report_dir=str(report_dir)))
  assert len(decoded) == 2
  stored = (report_dir / "results.json").read_text()

  def refuse(*args, **kwargs):
    raise AssertionError("a finished sweep loaded a model")
  with monkeypatch.context() as patch:
    patch.setattr(checkpoints, "load_model", refuse)
    subset = job.run(_config(tiny, method="ar", report_dir=str(report_dir)))
  assert [(c.method, c.num_draft_tokens) for c in subset.cells] == [("ar", 0)]
  assert (report_dir / "results.json").read_text() == stored

  more = job.run(_config(tiny, method="ar,sd", num_draft_tokens=(3,), report_dir=str(report_dir)))
  assert [(c.method, c.num_draft_tokens) for c in more.cells] == [("ar", 0), ("sd", 3)]
  other = job.run(_config(tiny, method="ar", prompts=str(tiny / "p5.jsonl"),
                          report_dir=str(report_dir)))
  assert [(c.prompt_set, c.method) for c in other.cells] == [("p5", "ar")]
  assert decoded[2:] == ["p3 sd K=3", "p5 ar K=0"]
  stored = json.loads((report_dir / "results.json").read_text())
  assert [(c["prompt_set"], c["method"], c["num_draft_tokens"]) for c in stored["cells"]] == [
      ("p3", "ar", 0), ("p3", "sd", 2), ("p3", "sd", 3), ("p5", "ar", 0)]
  assert stored["config"]["methods"] == ["ar", "sd"]
  assert stored["config"]["prompt_sets"] == ["p3", "p5"]
  assert "## p5" in (report_dir / "results.md").read_text()


# 12. Malformed files and values fail early, with one clear error.

def _without_chat_template(directory):
  (directory / "chat_template.jinja").unlink(missing_ok=True)
  tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
  tokenizer_config.pop("chat_template", None)
  (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))


def _without_vocab_size(directory):
  config = json.loads((directory / "config.json").read_text())
  del config["vocab_size"]
  (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("damage, error, message", [
    (_without_vocab_size, ConfigError, r"H: config.json lacks required field\(s\) vocab_size"),
    (lambda d: (d / "config.json").write_text("[1, 2]"), CheckpointError,
     "H: config.json must hold a JSON object, got list"),
    (lambda d: (d / "generation_config.json").write_text("{bad"), CheckpointError,
     "H/generation_config.json is not valid JSON"),
    (lambda d: (d / "generation_config.json").write_text("[1]"), CheckpointError,
     "H/generation_config.json must hold a JSON object, got list"),
    (_without_chat_template, ConfigError,
     r"config.chat_template: the target's tokenizer \(.*H\) has no chat template"),
])
def test_a_malformed_target_fails_before_loading(tiny, tmp_path, no_model_loading, damage, error,
                                                 message):
  target = _copy(tiny, tmp_path)
  damage(target)
  with pytest.raises(error, match=message):
    job.run(_config(tiny, target=str(target), drafter=str(target)))


def test_a_target_that_is_a_plain_file_fails_before_loading(tiny, tmp_path, no_model_loading):
  plain = tmp_path / "model.bin"
  plain.write_text("x")
  with pytest.raises(CheckpointError, match="model.bin is neither a HF model directory nor a "
                     ".gguf file"):
    job.run(_config(tiny, target=str(plain)))


@pytest.mark.parametrize("seed", [2**64, 2**63 - 1, 2**32, -1])
def test_a_seed_out_of_range_is_named(tiny, no_model_loading, seed):
  with pytest.raises(ConfigError, match=r"config.seed: must be an integer in \[0, 2\*\*32\)"):
    job.run(_config(tiny, seed=seed))


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "results.json").write_text((r / "results.json").read_text()[:100]),
     r"R/results.json:\d+: not valid JSON"),
    (lambda r: (r / "results.json").write_text(""), "R/results.json:1: not valid JSON"),
    (lambda r: (r / "results.json").write_text("[]"), "R/results.json: not a report"),
    (lambda r: shutil.rmtree(r / "outputs"),
     r"R/outputs/p3/pard_jax_ar_k0.jsonl: missing"),
    (lambda r: (r / "outputs/p3/pard_jax_ar_k0.jsonl").write_text('{"output_ids": [1]}\n{"o'),
     r"R/outputs/p3/pard_jax_ar_k0.jsonl:2: not valid JSON"),
])
def test_a_damaged_report_dir_fails_before_loading(tiny, tmp_path, monkeypatch, damage, message):
  report_dir = tmp_path / "R"
  job.run(_config(tiny, method="ar,sd", num_draft_tokens=(2,), report_dir=str(report_dir)))
  damage(report_dir)
  monkeypatch.setattr(checkpoints, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
  with pytest.raises(DataError, match=message):
    job.run(_config(tiny, method="ar,sd", num_draft_tokens=(2, 3), report_dir=str(report_dir)))



@pytest.mark.parametrize("name", ["a=b", "x,y", "label=p,q"])
def test_one_existing_drafter_path_is_taken_as_it_is(tiny, tmp_path, name, no_model_loading):
  """A path holding `=` or `,` is one drafter when it exists (not LABEL=PATH entries)."""
  path = tmp_path / name
  shutil.copytree(tiny / "P", path)
  spec = EvalSpec.from_config(_config(tiny, drafter=str(path), method="ar,pard"))
  assert spec.drafters == (("", path),)
