"""Training runs: `schema` (config fields and checks), `checkpointing` (orbax), `metrics`
(metrics.jsonl, TensorBoard, progress), `export` (HF directory and delta), `loop` (the run).
The train step itself is `pard_jax.training`."""
