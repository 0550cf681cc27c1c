"""What a Ray worker imports as it starts, before any trial reaches it.

Ray's workers import the modules named in the system config ``preload_python_modules``
as they start. ``study`` names this one for the Ray instance it starts, and the README for
a Ray instance kept up on a workstation (``ray start --head``). The first trial on a
pre-started worker then finds torch, Tune and the training code loaded. Not imported by
``import study``.

torch.optim imports torch._dynamo when a worker builds its first optimizer (about 1 s
here). Importing it here as well, even in a background thread, made a study slower on 2
cores (n=3: 54.1 s against 52.7 s): the pre-started workers compete with the driver's own
start for the CPU.
"""

import ray.tune  # noqa: F401
import torch  # noqa: F401

import study.block  # noqa: F401
import study.data  # noqa: F401
import study.fused  # noqa: F401
import study.train  # noqa: F401
