"""Evaluation: prompt sets, a sweep over (set, method, drafter, K) cells, peers, and the report.

`spec` checks a decode.py config, `prompts` reads prompt sets, `cells` times one cell, `peers`
times transformers on the same work, `report` writes results.json/results.md/plots, and `job`
runs the sweep.
"""
