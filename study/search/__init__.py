"""The search stage: the Optuna space and sampler, and the block searcher that asks and
tells Optuna for whole blocks of paired runs."""
