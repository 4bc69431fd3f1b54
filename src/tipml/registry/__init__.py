"""The model registry (MLflow) and model cards. ``registry.store`` is the only module in tipml
that imports mlflow; ``registry.cards`` is pure."""
