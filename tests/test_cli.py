"""The command lines: a user error is one line and status 2 for every entry point, a bug keeps
its traceback, logs stay quiet unless asked; distill.py refuses to mix settings in one output,
names a corrupt output line, and says when no prompt fits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from absl import logging

from pard_jax import cli, distillation
from pard_jax.errors import ConfigError, DataError
from tests.helpers import ROOT
from tests.test_distill import config  # noqa: F401  pylint: disable=unused-import  (a fixture)


def _entry_point(script, args, tmp_path):
  result = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
  return result.returncode, result.stdout, result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("script, args, message", [
    ("decode.py", ["--config.method=bogus"],
     "decode.py: config.method: unknown method 'bogus'; choose from ar, sd, pard, parallelspec"),
    ("train.py", [f"--config={ROOT}/configs/tiny.py", "--workdir=W",
                  "--config.drafter.r_min=1.5"],
     "train.py: config.drafter.r_min: must be in [0, 1], got 1.5"),
    ("distill.py", ["--config.source=missing.jsonl", "--config.output=o.jsonl"],
     "distill.py: prompts file not found: missing.jsonl"),
])
def test_a_user_error_is_one_line_and_status_2(script, args, message, request, tmp_path):
  if script == "distill.py":  # a real target, so that the source is what fails
    args = [f"--config.target={request.getfixturevalue('config').target}", *args]
  status, stdout, stderr = _entry_point(script, args, tmp_path)
  assert (status, stderr.splitlines()) == (2, [message]), stderr
  assert "wrote" not in stdout and not (tmp_path / "W").exists()


@pytest.mark.parametrize("argv, default, message", [
    (["decode.py", "--config.num_draft_token=4"], "configs/decode.py",
     "config.num_draft_token: unknown setting; did you mean config.num_draft_tokens?"),
    (["train.py", "--config=configs/tiny.py", "--config.train.bogus=1"], None,
     "config.train.bogus: unknown setting; did you mean config.train.b2 or config.train.b1 "
     "or config.train.eps?"),
    (["train.py", "--config=configs/qwen2_5.py:/m", "--config.trian.seed=1"], None,
     "config.trian.seed: unknown setting; did you mean config.train?"),
    (["distill.py", "--config.target=x", "--config.batch_size=2"], "configs/distill.py", None),
])
def test_a_misspelled_setting_is_named_with_the_closest_ones(argv, default, message,
                                                             monkeypatch):
  monkeypatch.chdir(ROOT)
  assert cli.unknown_setting(argv, default) == message


def test_a_misspelled_setting_is_one_line_and_status_2(tmp_path):
  status, _, stderr = _entry_point("decode.py", ["--config.num_draft_token=4"], tmp_path)
  assert (status, stderr.splitlines()) == (2, [
      "decode.py: config.num_draft_token: unknown setting; did you mean "
      "config.num_draft_tokens?"])


@pytest.fixture
def absl_verbosity():
  """`cli.run` sets absl's verbosity for the process; put it back for the other tests."""
  saved = logging.get_verbosity()
  yield
  logging.set_verbosity(saved)


def test_ctrl_c_is_one_line_saying_what_was_kept_and_status_130(absl_verbosity, capsys):
  def main():
    raise KeyboardInterrupt

  with pytest.raises(SystemExit) as exited:
    cli.run(main, argv=["train.py"], interrupted="checkpoints kept; rerun to resume")
  assert exited.value.code == 130
  assert capsys.readouterr().err.strip().splitlines() == [
      "train.py: interrupted; checkpoints kept; rerun to resume"]


def test_a_bug_keeps_its_traceback(absl_verbosity):
  def main():
    raise RuntimeError("a bug")

  with pytest.raises(RuntimeError, match="a bug") as raised:
    cli.run(main, argv=["decode.py"])
  assert raised.traceback[-1].name == "main"  # the frame that raised, not a one-line summary


def test_a_user_error_in_process_prints_one_line(absl_verbosity, capsys):
  def main():
    raise ConfigError("config.top_p: must be in (0, 1], got 2")

  with pytest.raises(SystemExit) as raised:
    cli.run(main, argv=["/some/dir/distill.py"])
  assert raised.value.code == 2
  assert capsys.readouterr().err == "distill.py: config.top_p: must be in (0, 1], got 2\n"


LOGGING_MAIN = """
import logging as std_logging
from absl import logging
from pard_jax import cli
def main():
  logging.info("absl info")
  std_logging.getLogger("some.library").info("library info")
  logging.warning("absl warning")
cli.run(main)
"""


@pytest.mark.slow
@pytest.mark.parametrize("args, shown", [
    ([], ["absl warning"]),
    (["--verbosity=0"], ["absl info", "library info", "absl warning"]),
    (["-v", "0"], ["absl info", "library info", "absl warning"]),
])
def test_logs_hide_info_unless_verbosity_asks(args, shown, tmp_path):
  result = subprocess.run([sys.executable, "-c", LOGGING_MAIN, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  assert [m for m in ("absl info", "library info", "absl warning")
          if m in result.stderr] == shown


# ---------------------------------------------------------------------------- distill.py


def test_a_rerun_with_other_settings_is_refused(config, tmp_path):  # noqa: F811
  output = distillation.run(config)
  written = output.read_text()
  record = json.loads(output.with_name(output.name + ".settings.json").read_text())
  assert record["temperature"] == 0.0 and record["max_new_tokens"] == 6
  for changes, named in [
      ({"temperature": 0.7, "top_k": 5}, r"temperature: 0.0 there, 0.7 now; top_k: 0 there, "
       r"5 now"),
      ({"top_p": 0.9}, "top_p: 1.0 there, 0.9 now"),
      ({"max_new_tokens": 7}, "max_new_tokens: 6 there, 7 now"),
      ({"seed": 1}, "seed: 0 there, 1 now"),
      ({"max_prompt_tokens": 100}, "max_prompt_tokens: 192 there, 100 now"),
      ({"dtype": "bfloat16"}, "dtype: 'float32' there, 'bfloat16' now"),
      ({"target": str(tmp_path / "other")}, "target: '.*target' there, '.*other' now"),
  ]:
    changed = config.copy_and_resolve_references()
    changed.update(changes)
    with pytest.raises(ConfigError, match=f"^config.output: .*distilled.jsonl holds answers "
                       f"made with other settings \\({named}\\)"):
      distillation.run(changed)
    assert output.read_text() == written  # nothing appended, nothing lost
  # More prompts or another batch size complete the same data.
  config.update(dict(batch_size=3, max_prompts=0))
  assert distillation.run(config) == output and output.read_text() == written


def test_an_output_without_its_settings_record_is_refused(config, tmp_path):  # noqa: F811
  output = tmp_path / "out" / "distilled.jsonl"
  output.parent.mkdir()
  output.write_text(json.dumps({"id": "a:1", "conversations": []}) + "\n")
  with pytest.raises(ConfigError, match=r"^config.output: .*distilled.jsonl holds answers but "
                     r"no distilled.jsonl.settings.json"):
    distillation.run(config)


@pytest.mark.parametrize("lines, message", [
    (['{"id": "a:1"}', '{"id": "a:2", "conv', '{"id": "a:3"}'], r"o.jsonl:2: not valid JSON"),
    (['{"id": "a:1"}', '{"conversations": []}', '{"id": "a:3"}'], r"o.jsonl:2: no \"id\""),
    (['{"id": "a:1"}', '["a:2"]'], r"o.jsonl:2: no \"id\""),
])
def test_a_corrupt_output_line_is_named(lines, message, tmp_path):
  output = tmp_path / "o.jsonl"
  output.write_text("\n".join(lines) + "\n")
  with pytest.raises(DataError, match=message):
    distillation.finished_ids(output)


def test_no_prompt_that_fits_is_an_error_not_an_empty_success(config, tmp_path):  # noqa: F811
  config.max_prompt_tokens = 3
  with pytest.raises(ConfigError, match=r"^config.max_prompt_tokens: no prompt of .*prompts"
                     r".jsonl fits in 3 tokens; the shortest has \d+"):
    distillation.run(config)
  assert not (tmp_path / "out" / "distilled.jsonl").exists()
