"""The stage engine: how a protocol stage runs, not what it computes.

- :mod:`~xrbench.engine.stage`: the stage contract (``Stage``: its protocol call, parameters,
  summary rows and columns) and :func:`~xrbench.engine.stage.run_stages`, which runs a list
  of stages in order, each cached;
- :mod:`~xrbench.engine.runtime`: the run context (model, dataset, subset, explainer,
  per-stage random generators) and the stage cache, keyed by a hash of everything a stage
  depends on, so an interrupted run resumes;
- :mod:`~xrbench.engine.sharding` and :mod:`~xrbench.engine.executors`: a long stage split
  into deterministic shards, run in this process or as Ray tasks, merged into exactly what an
  unsharded run gives;
- :mod:`~xrbench.engine.entry`: the JSON entry built from the stages' outputs.

The protocol's own stages (PROTOCOL.md section 5) are declared in :mod:`xrbench.stages`, above
this package; the engine never imports them (import-linter contracts in pyproject.toml).
"""
