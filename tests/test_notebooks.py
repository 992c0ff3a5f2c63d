"""The colab/ notebooks run top to bottom (small settings injected as parameters)."""

import pytest

from pard_jax.eval import report
from tests.helpers import ROOT, execute_notebook

# Measured τ of the shipped drafters at K=4 is 1.2-1.4: weak, but they must draft.
TAU_FLOOR = 1.05


def _outputs(notebook) -> str:
  return "".join(str(output) for cell in notebook.cells for output in cell.get("outputs", []))


@pytest.mark.slow
def test_train_notebook_turns_an_ar_model_into_a_pard_drafter(tmp_path):
  notebook = execute_notebook(ROOT / "colab/train_pard_drafter.ipynb",
                              dict(AR_STEPS=20, PARD_STEPS=20, WORKDIR=str(tmp_path)))
  assert (tmp_path / "pard/hf/config.json").exists()
  outputs = _outputs(notebook)
  assert "image/png" in outputs and "| pard_jax | pard | 4 |" in outputs


@pytest.mark.slow
@pytest.mark.real_model
def test_quickstart_notebook_runs_the_main_job_exactly_with_drafts_accepted(tmp_path):
  # The notebook runs configs/decode.py (ar, and pard with each shipped drafter) on one set:
  # each further set compiles every decoder again (its own prompt width).
  notebook = execute_notebook(ROOT / "colab/quickstart.ipynb", dict(
      PROMPT_SETS="gsm8k", MAX_PROMPTS=1, MAX_NEW_TOKENS=32, NUM_DRAFT_TOKENS=(4,),
      REPORT_DIR=str(tmp_path)))
  outputs = _outputs(notebook)
  assert "| pard_jax | pard [feature] | 4 |" in outputs and "| pard_jax | pard [cut] | 4 |" in \
      outputs
  assert "image/png" in outputs
  _, _, cells = report.read_results(tmp_path)
  drafted = {c.drafter: c for c in cells if c.method == "pard"}
  assert sorted(drafted) == ["cut", "feature"]
  for cell in drafted.values():
    assert cell.identical_to_ar == 1 and cell.tau > TAU_FLOOR, cell
