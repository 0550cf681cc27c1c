"""The validated spec: frozen objects that every later stage reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from study.spec.knobs import fmt_number
from study.terminal import printable


@dataclass(frozen=True)
class Dist:
    """One searched knob: an Optuna distribution, optionally conditional (`when`)."""

    kind: str  # "choice", "int" or "float"
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log: bool = False
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def values(self) -> int:
        """How many values it can take (a float range: as many as a study can ask)."""
        if self.kind == "choice":
            return len(self.choices)
        if self.kind == "int":
            return int((self.high - self.low) // (self.step or 1)) + 1
        return 10**9

    def describe(self) -> str:
        if self.kind == "choice":
            s = "choice " + ", ".join(fmt_number(c) for c in self.choices)
        else:
            s = f"{self.kind} [{fmt_number(self.low)}, {fmt_number(self.high)}]"
            if self.log:
                s += " log"
            if self.step is not None:
                s += f" step {fmt_number(self.step)}"
        if self.when:
            s += " when " + ", ".join(
                f"{k} in {list(v)}" for k, v in self.when.items()
            )
        return s


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    path: str | None = None
    val_fraction: float = 0.1  # of the training pool, held out for model selection
    test_fraction: float = 0.2  # only for datasets without a predefined test split
    split_seed: int = 0  # fixes the split, independent of the run seeds
    limit: int | None = None  # keep at most this many training examples (quick studies)
    # synthetic only
    samples: int = 600
    image_size: int = 8
    channels: int = 1
    classes: int = 10

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class SequentialSpec:
    """`verdict.sequential`: seeds are added after the search until every comparison is
    settled or has `max_pairs` pairs (``study.search.looks``)."""

    max_pairs: int  # the most pairs one comparison may get (its final look)
    looks: int  # planned looks, equally spaced in pairs up to max_pairs
    spending: str  # alpha-spending function: obrien_fleming or pocock
    min_pairs: int = 5  # no look before this many pairs (a t interval needs a few)

    def describe(self) -> str:
        return (f"sequential: up to {self.max_pairs} pairs per comparison, {self.looks} "
                f"planned looks, {self.spending.replace('_', '-')} alpha spending")


@dataclass(frozen=True)
class StudySpec:
    name: str
    question: str
    dataset: DatasetSpec
    model: str
    fixed: Mapping[str, Any]  # every knob not searched or compared, with its value
    space: Mapping[str, Dist]
    compare_knob: str | None
    compare_levels: tuple[Any, ...]
    repeats: int
    sampler: str
    trials: int  # configurations Optuna proposes
    seed: int  # sampler seed; run seeds are seed, seed + 1, ... (one per repeat)
    startup_trials: int  # TPE: random configurations before the model-based ones
    pending: int  # configurations proposed before earlier results are known (see searcher)
    scheduler: str  # fifo (every run to its last epoch) or asha (early stopping)
    grace_period: int  # asha: epochs before a run can be stopped
    reduction_factor: int  # asha: keep the top 1/reduction_factor at each rung
    metric: str
    mode: str
    verdict_metric: str  # what the verdict is about (e.g. test_accuracy)
    verdict_mode: str  # max if higher is better
    margin: float  # equivalence margin, in the metric's units (0.005 = 0.5 pp)
    verdict_by: tuple[str, ...]  # knobs to break the effect down by
    alpha: float
    sequential: SequentialSpec | None  # seeds added after the search until settled
    cpu: float
    gpu: float
    concurrency: int | None
    retries: int
    # epochs between checkpoints a retried run continues from; 0: never; None (auto): by
    # time (study.train.block.AUTO_CHECKPOINT_SECONDS)
    checkpoint_every: int | None
    fuse: str  # auto (on a GPU), on, off: train a block's compatible runs as one model
    runs_per_trial: int | None  # runs per Tune trial (whole pairs); None: chosen (runner)
    optuna_storage: str
    tracking_uri: str
    results_dir: str
    source: str  # the file it came from (or "<dict>")
    # every (metric, mode) Optuna optimizes; the first is `metric`, `mode` (study.spec.objectives)
    objectives: tuple[tuple[str, str], ...] = ()
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)

    @property
    def multi_objective(self) -> bool:
        """Several metrics: Optuna searches a Pareto front, the report draws it."""
        return len(self.objectives) > 1

    @property
    def levels(self) -> tuple[Any, ...]:
        """The levels each configuration runs: the compared ones, or a single None."""
        return self.compare_levels if self.compare_knob else (None,)

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(self.seed + r for r in range(self.repeats))

    @property
    def most_runs(self) -> int:
        """The runs the study can reach: the search's, plus what the sequential phase may
        add (study.search.looks.most_extra_pairs)."""
        return self.total_runs + self.most_extra_pairs * len(self.levels)

    @property
    def most_extra_pairs(self) -> int:
        """Pairs the sequential phase may add at most: up to max_pairs for the comparison
        over all configurations and for each `verdict.by` group (a group is a value of a
        `by` knob: at most its values, at most one per configuration)."""
        if self.sequential is None:
            return 0
        groups = sum(min(self.trials, self.space[b].values()) for b in self.verdict_by)
        return self.sequential.max_pairs * (1 + groups)

    @property
    def runs_per_config(self) -> int:
        return len(self.levels) * self.repeats

    @property
    def total_runs(self) -> int:
        return self.trials * self.runs_per_config

    def summary(self) -> str:
        """What the study runs, in a few lines, safe to print on a terminal."""
        lines = [
            f"study {self.name!r} ({self.source})",
            f"  question: {self.question}",
            f"  dataset:  {self.dataset.name}"
            + (f" ({self.dataset.path})" if self.dataset.path else ""),
            f"  model:    {self.model}",
        ]
        if self.compare_knob:
            lines.append(
                f"  compare:  {self.compare_knob} = "
                + " vs ".join(fmt_number(v) for v in self.compare_levels)
            )
        for k, d in self.space.items():
            lines.append(f"  search:   {k}: {d.describe()}")
        fixed = ", ".join(f"{k}={fmt_number(v)}" for k, v in self.fixed.items())
        lines.append(f"  fixed:    {fixed}")
        lines.append(
            f"  runs:     {self.trials} configs x {len(self.levels)} levels x "
            f"{self.repeats} seeds = {self.total_runs} training runs "
            f"({self.sampler} sampler, seed {self.seed})"
        )
        lines.append(self._metric_line())
        if self.compare_knob:
            by = f", broken down by {', '.join(self.verdict_by)}" if self.verdict_by else ""
            lines.append(f"  verdict:  {self.verdict_metric}, equivalence margin "
                         f"±{fmt_number(self.margin)}, alpha {fmt_number(self.alpha)}{by}")
            if self.sequential:
                lines.append(f"            {self.sequential.describe()}")
        lines.append(f"  per run:  {fmt_number(self.cpu)} cpu, {fmt_number(self.gpu)} gpu")
        # the question, file and dataset path are the user's: shown, never obeyed
        return printable("\n".join(lines))

    def _metric_line(self) -> str:
        if not self.multi_objective:
            return (f"  metric:   {self.metric} ({self.mode}), told to Optuna as the mean "
                    "over a configuration's runs")
        return ("  metrics:  " + ", ".join(f"{m} ({d})" for m, d in self.objectives)
                + ": a multi-objective search (Pareto front), each told to Optuna as the "
                "mean over a configuration's runs")
