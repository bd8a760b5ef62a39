"""One module per experiment: config dataclass, data, model, loop. Registered in ratsweep.registry.

Nothing here imports Ray, MLflow, YAML or the CLI: an experiment is `run(config, session)`.
"""
