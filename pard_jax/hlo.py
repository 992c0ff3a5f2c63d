"""Reading compiled HLO text: the collectives one decoding iteration runs over a mesh.

`collectives_per_iteration(compiled.as_text())` walks the call graph from the body of the
outermost `while` (the decoding loop): a nested `while` counts its body as many times as its
known trip count (the drafter's K autoregressive forwards), a conditional its costliest branch
(the verify width `lax.switch`), so the result bounds what one iteration can run.
"""

from __future__ import annotations

import collections
import re

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")
_OPCODE = re.compile(r"\b(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_CALLED = re.compile(r"\b(?:calls|body|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_WHILE = re.compile(r"\bwhile\(.*\bbody=%?([\w.\-]+)")


def _computations(hlo_text: str) -> dict[str, list[str]]:
  computations, name = {}, None
  for line in hlo_text.splitlines():
    match = _COMPUTATION.match(line)
    if match:
      name = match.group(1)
      computations[name] = []
    elif line.startswith("}"):
      name = None
    elif name is not None:
      computations[name].append(line)
  return computations


def _count(name: str, computations, memo) -> collections.Counter:
  if name not in memo:
    total = collections.Counter()
    for line in computations.get(name, ()):
      opcode = _OPCODE.search(line)
      if opcode:
        total[opcode.group(1)] += 1
      loop = _WHILE.search(line)
      if loop:  # the condition runs once more than the body; it holds no collectives here
        trips = _TRIP_COUNT.search(line)
        body = _count(loop.group(1), computations, memo)
        for _ in range(int(trips.group(1)) if trips else 1):
          total.update(body)
        continue
      for called in _CALLED.findall(line):
        total.update(_count(called, computations, memo))
      branches = _BRANCHES.search(line)
      if branches:
        counts = [_count(b.strip().lstrip("%"), computations, memo)
                  for b in branches.group(1).split(",")]
        total.update(max(counts, key=lambda c: sum(c.values())))
    memo[name] = total
  return memo[name]


def collectives_per_iteration(hlo_text: str, loop_op_name: str = "jit(decode_loop)/while"
                              ) -> dict[str, int]:
  """Collective ops (by kind) one iteration of the `while` whose metadata op_name is
  `loop_op_name` runs; raises ValueError when the text has no such loop."""
  computations = _computations(hlo_text)
  for lines in computations.values():
    for line in lines:
      if f'op_name="{loop_op_name}"' in line and _WHILE.search(line):
        counts = _count(_WHILE.search(line).group(1), computations, {})
        return {kind: counts[kind] for kind in COLLECTIVES}
  raise ValueError(f"no while loop with op_name {loop_op_name!r} in the HLO text")


_GATHERED = re.compile(r"= \w+\[([\d,]*)\]\S* all-gather(?:-start)?\(")


def all_gather_shapes(hlo_text: str) -> set[tuple[int, ...]]:
  """The result shapes of every all-gather in the program (a gathered weight shows here with
  the weight's full shape)."""
  return {tuple(int(d) for d in dims.split(",") if d)
          for dims in _GATHERED.findall(hlo_text)}
