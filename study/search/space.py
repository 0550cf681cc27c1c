"""Spec -> Optuna define-by-run search space and sampler; a configuration -> its runs.

A *configuration* is what Optuna proposes (values for the searched knobs). Each configuration
runs once per compared level and per seed; the runs that share a configuration and a seed
are a *pair* (a block, with more than two levels).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from study.spec import StudySpec

if TYPE_CHECKING:
    import optuna

__all__ = ["define_by_run", "expand_runs", "grid_sampler", "make_sampler", "run_key"]


class define_by_run:  # noqa: N801 - used like a function; a class so that it pickles
    """The search space as an Optuna define-by-run function.

    Unconditional knobs are suggested first, in spec order; a knob with `when` is suggested
    only if its condition holds. A condition on the compared knob always holds (the value
    is used by the arms whose level matches).
    """

    def __init__(self, spec: StudySpec) -> None:
        self.spec = spec
        self.order = [k for k, d in spec.space.items() if not d.when] + \
            [k for k, d in spec.space.items() if d.when]

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        """Suggest every knob that applies on `trial`; returns them in suggestion order."""
        chosen: dict[str, Any] = {}
        for k in self.order:
            d = self.spec.space[k]
            if any(cond != self.spec.compare_knob and chosen.get(cond, _MISSING) not in allowed
                   for cond, allowed in d.when.items()):
                continue
            if d.kind == "choice":
                chosen[k] = trial.suggest_categorical(k, list(d.choices))
            elif d.kind == "int":
                chosen[k] = trial.suggest_int(k, int(d.low), int(d.high),
                                              step=int(d.step or 1), log=d.log)
            else:
                chosen[k] = trial.suggest_float(k, float(d.low), float(d.high), step=d.step,
                                                log=d.log)
        return chosen


_MISSING = object()


def make_sampler(spec: StudySpec, config: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler that proposes configuration `config`, seeded by (search.seed, config).

    QMC keeps one seed (its scrambled sequence is indexed by the trial number)."""
    import optuna

    seed = (spec.seed * 1_000_003 + config) % 2**32
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.startup_trials)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=spec.seed, scramble=True)
    if spec.sampler == "grid":
        return grid_sampler(spec)
    if spec.sampler == "nsga2":  # its first generation (startup_trials, at least 2) is random
        return optuna.samplers.NSGAIISampler(seed=seed,
                                             population_size=max(2, spec.startup_trials))
    raise ValueError(f"unknown sampler {spec.sampler!r}; allowed: tpe, random, qmc, grid, "
                     "nsga2")


def grid_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    """Optuna's GridSampler over the spec's grid (study.spec.grid), one seed for the whole
    study: trial k gets point k of the grid shuffled by `search.seed`, so configuration k
    is the same point on every run, resume and machine, and each point comes once."""
    import optuna

    from study.spec.grid import grid_values

    class ToTheEnd(optuna.samplers.GridSampler):
        """Never stops the study itself: GridSampler's `after_trial` calls `Study.stop`,
        which raises outside `Study.optimize`; the searcher ends after `search.trials`."""

        def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        state: optuna.trial.TrialState, values: Any) -> None:
            return None

    return ToTheEnd({k: grid_values(d) for k, d in spec.space.items()}, seed=spec.seed)


def run_key(config: int, level: Any, seed: int, compare_knob: str | None) -> str:
    """A stable, readable id for one training run, e.g. ``c003-bias=False-s1``."""
    lvl = f"-{compare_knob}={level}" if compare_knob else ""
    return f"c{config:03d}{lvl}-s{seed}"


def expand_runs(spec: StudySpec, config: int, params: Mapping[str, Any],
                seeds: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Every run of one configuration (of `seeds`, default the search's): seeds outer,
    levels inner (pairs stay adjacent)."""
    runs = []
    for seed in spec.seeds if seeds is None else seeds:
        for level in spec.levels:
            knobs = {**spec.fixed, **params}
            if spec.compare_knob:
                knobs[spec.compare_knob] = level
            # a conditional knob that does not apply takes its default (it is unused)
            for k, d in spec.space.items():
                if k in knobs and not all(knobs.get(c) in allowed for c, allowed in
                                          d.when.items()):
                    knobs[k] = _default(k)
                knobs.setdefault(k, _default(k))
            runs.append({
                **knobs,
                "model": spec.model,  # the family build_model builds
                "seed": seed,
                "config": config,
                "level": level,
                "pair": f"c{config:03d}-s{seed}",
                "run_key": run_key(config, level, seed, spec.compare_knob),
            })
    return runs


def _default(knob: str) -> Any:
    from study.spec import KNOBS

    return KNOBS[knob].default
