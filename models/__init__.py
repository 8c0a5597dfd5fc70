"""The model package: features, networks, the shared fit loop, the predictor and the registry of model kinds.

Plain PyTorch/numpy: nothing here imports Prefect, the CLI or the pipeline steps.
"""
