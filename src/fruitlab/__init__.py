"""fruitlab: transfer-learning experiments for image classification (Lightning, timm, Optuna, MLflow)."""

__version__ = "0.1.0"
