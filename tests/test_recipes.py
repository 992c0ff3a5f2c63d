"""Every shipped training recipe passes the checks train.py runs before it loads a model, and
its data files exist: a recipe that names a missing drafter or data file, or a setting its
model refutes, fails here rather than minutes into someone's run."""

import pathlib

import pytest

from pard_jax import data as data_lib
from pard_jax.train.spec import TrainSpec
from tests.helpers import ROOT, load_config

# Recipes whose model and data ship with the repository and setup.sh (llama3_8b and qwen2_5 take
# the user's own model directory and data).
RECIPES = ["tiny.py", "tiny_parallelspec.py"] + [
    pytest.param(p.name, marks=pytest.mark.real_model)  # SmolLM2 is their target
    for p in sorted((ROOT / "configs").glob("smollm2*.py"))] + [
    pytest.param("qwen2_5_coder.py", marks=pytest.mark.real_model)]  # the main job's drafter


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_shipped_recipe_passes_the_checks_before_loading(recipe, no_model_loading):
  spec = TrainSpec.from_config(load_config(f"configs/{recipe}"))
  spec.check_model(spec.starting_model_config())
  sources = spec.data.source + (f",{spec.heldout.source}" if spec.heldout.source else "")
  files = [s for s in data_lib.split_sources(sources) if "/" in s]  # not sharegpt, tfds:
  assert all(pathlib.Path(f).is_file() for f in files), files
