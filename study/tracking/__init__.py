"""The tracking stage: the MLflow layout (tags, params, child and parent runs), the
batched writer, and the stores a study creates."""
