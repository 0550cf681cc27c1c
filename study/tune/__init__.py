"""The orchestration stage: Ray Tune runs the study (runner, trainable, callback,
scheduler), and the one module that changes Ray's own start-up (``ray_adapter``)."""
