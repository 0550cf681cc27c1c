"""What a Ray worker imports as it starts, before any trial reaches it.

Ray's workers import the modules named in the system config ``preload_python_modules``
as they start. ``study`` names this one for the Ray instance it starts, and the README for
a Ray instance kept up on a workstation (``ray start --head``). The first trial on a
pre-started worker then finds torch, Tune and the training code loaded. Not imported by
``import study``.

torch._dynamo, which torch.optim imports when a worker builds its first optimizer, is
left out on purpose: importing it here too, even in a background thread, makes the
pre-started workers compete with the driver's own start for the CPU.
"""

import ray.tune  # noqa: F401
import torch  # noqa: F401

import study.data.load  # noqa: F401
import study.train.block  # noqa: F401
import study.train.fused  # noqa: F401
import study.train.trainer  # noqa: F401
