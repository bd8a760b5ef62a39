"""Search-space YAML -> Ray Tune sweeps tracked in MLflow: the only package that imports ray and mlflow."""
