"""Fault injection for tests and drills: runs that fail, or whose worker dies, on purpose.

The plan is read by the workers from STUDY_INJECT_FAILURE in their environment
(comma-separated): ``study/run_key`` raises at the start of every attempt of that run;
``study/run_key@N`` kills the worker process after epoch N of the first attempt. Unset, the
trainable gets no hook at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

ENV = "STUDY_INJECT_FAILURE"

Hook = Callable[[Sequence[str], int, bool], None]


def planned_death(run_id: str, plan: str) -> int | None:
    """The epoch after which `run_id` ("study/run_key") dies in `plan`, or None; raises
    RuntimeError for a run planned to fail outright."""
    for item in filter(None, plan.split(",")):
        target, _, epoch = item.strip().partition("@")
        if target == run_id:
            if not epoch:
                raise RuntimeError(f"injected failure for {run_id} ({ENV})")
            return int(epoch)
    return None


def before_epoch_hook(study: str) -> Hook | None:
    """The block's `before_epoch` hook that carries out this worker's plan, or None."""
    plan = os.environ.get(ENV, "")
    if not plan:
        return None

    def before_epoch(keys: Sequence[str], epoch: int, restored: bool) -> None:
        for key in keys:
            die_after = planned_death(f"{study}/{key}", plan)
            if die_after is not None and not restored and epoch == die_after + 1:
                os._exit(1)  # injected: the worker process dies (first attempt only)

    return before_epoch
