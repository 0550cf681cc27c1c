"""The benchmark's run list, the same for every approach: exactly the runs `study run`
proposes for the spec (random sampler, seeded per configuration)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from study.search.space import define_by_run, expand_runs, make_sampler  # noqa: E402
from study.spec import StudySpec, load_spec  # noqa: E402

SPEC = Path(__file__).resolve().parent / "bench_spec.yaml"


def bench_runs(spec: StudySpec | None = None) -> list[dict[str, Any]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = spec or load_spec(SPEC)
    study = optuna.create_study(direction="maximize")
    space = define_by_run(spec)
    runs = []
    for k in range(spec.trials):
        study.sampler = make_sampler(spec, k)
        trial = study.ask()
        space(trial)
        runs += expand_runs(spec, k, trial.params)
        study.tell(trial, 0.0)
    return runs
