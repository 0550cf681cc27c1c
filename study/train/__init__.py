"""The training stage: models, the trainer, fused (vmapped) training, blocks of paired
runs trained in lockstep, checkpoints. Torch only: never MLflow, Optuna or Ray."""
