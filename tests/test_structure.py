"""The package's layering: no import cycle, and the lowest layer (settings, drafter metadata,
errors, configs) imports without jax."""

import ast
import pathlib
import subprocess
import sys

from tests.helpers import ROOT

PACKAGE = ROOT / "pard_jax"


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: pathlib.Path, modules: set[str]) -> set[str]:
  """The package modules `path` imports, anywhere in it (functions and TYPE_CHECKING too)."""
  found = set()
  name = module_name(path)
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                        + ([base] if base else []))
      for alias in node.names:
        candidate = f"{base}.{alias.name}"
        found.add(candidate if candidate in modules else base)
  return {m for m in found if m in modules}


def import_graph() -> dict[str, set[str]]:
  paths = sorted(PACKAGE.rglob("*.py"))
  modules = {module_name(p) for p in paths}
  return {module_name(p): imported_modules(p, modules) - {module_name(p)} for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state: dict[str, str] = {}
  stack: list[str] = []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for target in sorted(graph[node]):
      if state.get(target) == "open":
        return stack[stack.index(target):] + [target]
      if target not in state and (cycle := visit(target)):
        return cycle
    state[node] = "done"
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_no_module_of_the_package_is_imported_by_a_module_it_imports():
  graph = import_graph()
  assert len(graph) > 20 and "pard_jax.decoding" in graph["pard_jax.eval.job"]
  assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None


METHODS = {"ar", "sd", "pard", "parallelspec"}
# Where method names may be written: the kinds, and the config boundary that reads them.
METHOD_NAMES_ALLOWED = {"pard_jax/drafter_kinds.py", "pard_jax/eval/spec.py",
                        "pard_jax/train/spec.py", "pard_jax/train/defaults.py"}


def method_literals(source: str) -> list[int]:
  """Lines holding a method name as a string constant (docstrings aside)."""
  tree = ast.parse(source)
  docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
                and node.body and isinstance(node.body[0], ast.Expr)}
  return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Constant)
          and node.value in METHODS and id(node) not in docstrings]


def test_method_names_stop_at_the_kinds_and_the_config_boundary():
  """What differs between methods lives on the drafter kind (`uses_drafter`, `autoregressive`,
  `layout_masks`); elsewhere a method is named through `drafter_kinds` (`kinds.AR`, ...)."""
  paths = sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
  found = {str(p.relative_to(ROOT)): lines for p in paths
           if str(p.relative_to(ROOT)) not in METHOD_NAMES_ALLOWED
           and (lines := method_literals(p.read_text()))}
  assert not found, found


def test_the_method_literal_check_finds_one():
  assert method_literals('"""A docstring naming sd."""\nif m == "sd":\n  pass\n') == [2]
  assert method_literals("x = kinds.SD\n") == []


def test_settings_and_drafter_metadata_import_without_jax():
  code = ("import sys; sys.modules['jax'] = None; sys.modules['flax'] = None\n"
          "import pard_jax.config, pard_jax.drafter_kinds, pard_jax.errors\n"
          "import pard_jax.train.defaults, pard_jax.train.spec, pard_jax.train.settings\n"
          "import pard_jax.rules, pard_jax.decode_config\n"
          "from configs import decode, distill, tiny, tiny_parallelspec, smollm2, smollm2_drafter\n"
          "assert tiny.get_config().drafter.num_draft_tokens == 4\n"
          "assert smollm2.get_config().model.init.startswith('package:')\n"
          "try:\n  import jax\nexcept ImportError:\n  print('jax blocked')\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "jax blocked"


def test_the_jax_free_check_fails_on_a_module_that_imports_jax():
  code = ("import sys; sys.modules['jax'] = None\n"
          "import pard_jax.layout\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode != 0 and "import of jax halted" in result.stderr


def test_the_commit_msg_hook_refuses_a_long_subject(tmp_path):
  def commit(message):
    (tmp_path / "msg").write_text(message)
    return subprocess.run([str(ROOT / ".githooks/commit-msg"), str(tmp_path / "msg")],
                          capture_output=True, text=True, check=False)
  assert commit("Short subject\n\nA body line may be as long as it likes to be, really, yes.\n"
                "# a comment\n").returncode == 0
  refused = commit("x" * 73 + "\n")
  assert refused.returncode == 1 and "73 characters" in refused.stderr
  assert commit("Subject\nno blank line\n").returncode == 1
