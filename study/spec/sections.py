"""The small sections of a spec: fixed knobs, compare, search, metric, verdict, resources,
execution."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from study.spec.context import Context
from study.spec.families import FAMILIES
from study.spec.knobs import FUSE_MODES, KNOBS, LIMITS, METRICS, SAMPLERS, fmt_number
from study.spec.model import Dist, SequentialSpec

SPENDINGS = ("obrien_fleming", "pocock")  # as study.report.sequential.SPENDINGS (no scipy here)


@dataclass(frozen=True)
class _FixedKnobs:
    """`model:` and `train:`: the model family, the fuse mode, and every knob's value
    (its default where not set) with the field each set one came from; `allowed`: the
    knobs this family's runs read (its model knobs and every train knob)."""

    model: str
    fuse: str
    values: dict[str, Any]
    fixed_from: dict[str, str]
    allowed: tuple[str, ...]


def parse_fixed(c: Context, model_raw: Any, train_raw: Any) -> _FixedKnobs:
    """`model: cnn` or {name: FAMILY, <its model knobs>}; `train:` {<train knobs>, fuse}."""
    if isinstance(model_raw, str):
        model_raw = {"name": model_raw}
    name = model_raw.get("name", "cnn") if isinstance(model_raw, Mapping) else "cnn"
    model = c.string("model.name", name, list(FAMILIES))  # the error lists the known ones
    model_knobs = list(FAMILIES[model].knobs)
    model_map = c.mapping("model", model_raw, ["name", *model_knobs])
    model_map.pop("name", None)
    train_knobs = [k.name for k in KNOBS.values() if k.section == "train"]
    train_map = c.mapping("train", train_raw, [*train_knobs, "fuse"])
    fuse_raw = train_map.pop("fuse", "auto")
    if isinstance(fuse_raw, bool):  # YAML reads a bare on/off as true/false
        fuse_raw = "on" if fuse_raw else "off"
    fuse = c.string("train.fuse", fuse_raw, FUSE_MODES)
    values: dict[str, Any] = {k.name: k.default for k in KNOBS.values()}
    fixed_from: dict[str, str] = {}
    for section, m in (("model", model_map), ("train", train_map)):
        for k, v in m.items():
            values[k] = c.knob_value(f"{section}.{k}", KNOBS[k], v)
            fixed_from[k] = f"{section}.{k}"
    return _FixedKnobs(model, fuse, values, fixed_from, (*model_knobs, *train_knobs))


def parse_compare(c: Context, value: Any, knobs: _FixedKnobs) -> tuple[str | None, tuple[Any, ...]]:
    """`compare:` {knob: [level, level, ...]}: the compared knob (None: no comparison) and
    its distinct levels; a compared knob is not also fixed."""
    if value is None:
        return None, ()
    comp_map = c.mapping("compare", value, list(knobs.allowed))
    if len(comp_map) != 1:
        c.fail("compare", value, "exactly one knob with a list of at least two levels, "
               "e.g. {bias: [true, false]}")
    knob, levels = next(iter(comp_map.items()))
    path = f"compare.{knob}"
    lo_n, hi_n = LIMITS["levels"]
    if not isinstance(levels, list) or not lo_n <= len(levels) <= hi_n:
        c.fail(path, levels, f"a list of {fmt_number(lo_n)} to {fmt_number(hi_n)} distinct levels")
    checked = [c.knob_value(f"{path}[{i}]", KNOBS[knob], v) for i, v in enumerate(levels)]
    if len(set(map(repr, checked))) != len(checked):
        c.fail(path, levels, "distinct levels (a level is repeated)")
    if knob in knobs.fixed_from:
        c.fail(knobs.fixed_from[knob], knobs.values[knob],
               f"a knob set in one place only: {knob} is also compared "
               f"in `{path}`", "set twice")
    return knob, tuple(checked)


@dataclass(frozen=True)
class _Search:
    """`search:`; the fields are StudySpec's of the same names."""

    sampler: str
    trials: int
    seed: int
    startup_trials: int
    pending: int
    scheduler: str
    grace_period: int
    reduction_factor: int


def parse_search(c: Context, value: Any, searched: bool) -> _Search:
    """`search:` the sampler, trials and scheduler; `searched`: `space` is not empty."""
    search = c.mapping("search", value,
                       ["sampler", "trials", "seed", "startup_trials", "pending", "scheduler",
                        "grace_period", "reduction_factor"])
    out = _Search(
        sampler=c.string("search.sampler", search.get("sampler", "tpe"), SAMPLERS),
        trials=c.integer("search.trials", search.get("trials", 8 if searched else 1)),
        seed=c.integer("search.seed", search.get("seed", 0)),
        startup_trials=c.integer("search.startup_trials", search.get("startup_trials", 10)),
        pending=c.integer("search.pending", search.get("pending", 4)),
        scheduler=c.string("search.scheduler", search.get("scheduler", "fifo"),
                           ["fifo", "asha"]),
        grace_period=c.integer("search.grace_period", search.get("grace_period", 1)),
        reduction_factor=c.integer("search.reduction_factor",
                                   search.get("reduction_factor", 3)),
    )
    if out.scheduler == "fifo":
        for k in ("grace_period", "reduction_factor"):
            if k in search:
                c.fail(f"search.{k}", search[k], "this only with `scheduler: asha`",
                       "unused setting")
    if not searched and out.trials > 1:
        c.fail("search.trials", out.trials, "1 when `space` is empty (nothing to search: "
               "use `repeats` for more seeds)")
    return out


def check_run_count(c: Context, trials: int, levels: int, repeats: int) -> None:
    """trials x levels x repeats within LIMITS["runs"]."""
    runs = trials * levels * repeats
    if runs > LIMITS["runs"][1]:
        c.fail("search.trials", trials, f"trials x levels x repeats at most "
               f"{fmt_number(LIMITS['runs'][1])} (here {trials} x {levels} x "
               f"{repeats} = {runs}): split the study", "too many runs")


@dataclass(frozen=True)
class _Verdict:
    """`verdict:`; the fields are StudySpec's of the same names."""

    verdict_metric: str
    verdict_mode: str
    margin: float
    verdict_by: tuple[str, ...]
    alpha: float
    sequential: SequentialSpec | None


def parse_verdict(c: Context, value: Any, compare_knob: str | None,
                   space: Mapping[str, Dist]) -> _Verdict:
    """`verdict:` (only with `compare:`): metric, margin, alpha, searched knobs to break
    the effect down by, and the sequential phase."""
    vd = c.mapping("verdict", value, ["metric", "mode", "equivalence_margin", "by", "alpha",
                                      "sequential"])
    if vd and not compare_knob:
        c.fail("verdict", value, "a `verdict:` only together with `compare:` "
               "(the verdict is about the compared knob)", "nothing to compare")
    verdict_metric = c.string("verdict.metric", vd.get("metric", "test_accuracy"),
                              list(METRICS))
    verdict_mode = c.string("verdict.mode", vd.get("mode", METRICS[verdict_metric]),
                            ["max", "min"])
    margin = c.number("verdict.equivalence_margin", vd.get("equivalence_margin", 0.005),
                      *LIMITS["verdict.equivalence_margin"], low_open=True)
    by_raw = vd.get("by", [])
    by_list = [by_raw] if isinstance(by_raw, str) else by_raw
    if not isinstance(by_list, list):
        c.fail("verdict.by", by_raw, "a searched knob or a list of them")
    for i, b in enumerate(by_list):
        if not isinstance(b, str) or b not in space:
            c.fail(f"verdict.by[{i}]" if isinstance(by_raw, list) else "verdict.by", b,
                   "a knob searched in `space` (it must vary to break the effect down): "
                   + (", ".join(space) or "none is searched"))
    alpha = c.number("verdict.alpha", vd.get("alpha", 0.05), *LIMITS["verdict.alpha"],
                     low_open=True)
    sequential = parse_sequential(c, vd.get("sequential"), alpha)
    return _Verdict(verdict_metric, verdict_mode, margin, tuple(by_list), alpha, sequential)


def parse_sequential(c: Context, value: Any, alpha: float) -> SequentialSpec | None:
    """`verdict.sequential:` {max_pairs, looks, spending, min_pairs} (None: not set)."""
    if value is None:
        return None
    path = "verdict.sequential"
    sq = c.mapping(path, value, ["max_pairs", "looks", "spending", "min_pairs"])
    if "max_pairs" not in sq:
        c.fail(f"{path}.max_pairs", None, "an integer: the most pairs one comparison may get, "
               "e.g. {max_pairs: 60, looks: 5}", "missing required field")
    out = SequentialSpec(
        max_pairs=c.integer(f"{path}.max_pairs", sq["max_pairs"]),
        looks=c.integer(f"{path}.looks", sq.get("looks", 5)),
        spending=c.string(f"{path}.spending", sq.get("spending", "obrien_fleming"),
                          SPENDINGS),
        min_pairs=c.integer(f"{path}.min_pairs", sq.get("min_pairs", 5)))
    if out.max_pairs < out.min_pairs:
        c.fail(f"{path}.max_pairs", out.max_pairs, f"at least min_pairs ({out.min_pairs}): "
               "no look happens before min_pairs pairs")
    most = out.max_pairs - out.min_pairs + 1
    if out.looks > most:
        c.fail(f"{path}.looks", out.looks, f"at most max_pairs - min_pairs + 1 ({most}): "
               "two looks need at least one more pair between them")
    if alpha >= 0.5:
        c.fail("verdict.alpha", alpha, "below 0.5 with `verdict.sequential` (alpha is "
               "spent over the looks)")
    return out


def check_sequential(c: Context, sequential: SequentialSpec | None, scheduler: str,
                     most_runs: int) -> None:
    """The sequential phase needs every run to its last epoch and a bounded run count."""
    if sequential is None:
        return
    if scheduler != "fifo":
        c.fail("search.scheduler", scheduler, "fifo with `verdict.sequential` (a pair "
               "stopped early has no value to look at)")
    if most_runs > LIMITS["runs"][1]:
        c.fail("verdict.sequential.max_pairs", sequential.max_pairs,
               f"a maximum that keeps the runs the study can reach at most "
               f"{fmt_number(LIMITS['runs'][1])} (here up to {most_runs}: the search's runs "
               "plus max_pairs pairs for the overall comparison and for each `by` group)",
               "too many runs")


def parse_resources(c: Context, value: Any) -> tuple[float, float]:
    """`resources:` CPUs and GPUs per run (a GPU fraction only below one)."""
    res = c.mapping("resources", value, ["cpu", "gpu"])
    cpu = c.number("resources.cpu", res.get("cpu", 1), *LIMITS["resources.cpu"], low_open=True)
    gpu = c.number("resources.gpu", res.get("gpu", 0))
    if gpu > 1 and not gpu.is_integer():
        c.fail("resources.gpu", res.get("gpu"), "a fraction in (0, 1] or a whole number of "
               "GPUs")
    return cpu, gpu


@dataclass(frozen=True)
class _Execution:
    """`execution:`; the fields are StudySpec's of the same names."""

    concurrency: int | None
    retries: int
    checkpoint_every: int | None
    runs_per_trial: int | None


def parse_execution(c: Context, value: Any) -> _Execution:
    """`execution:` concurrency, retries, checkpoints and runs per Tune trial."""
    ex = c.mapping("execution", value,
                   ["concurrency", "retries", "checkpoint_every", "runs_per_trial"])
    conc_raw = ex.get("concurrency")
    return _Execution(
        concurrency=None if conc_raw is None else c.integer("execution.concurrency",
                                                            conc_raw),
        retries=c.integer("execution.retries", ex.get("retries", 2)),
        checkpoint_every=c.integer_or_auto("execution.checkpoint_every",
                                           ex.get("checkpoint_every", "auto")),
        runs_per_trial=c.integer_or_auto("execution.runs_per_trial",
                                         ex.get("runs_per_trial", "auto")),
    )


def check_fuse(c: Context, fuse: str, fixed: Mapping[str, Any]) -> None:
    """`train.fuse: on` needs one loss scaler per fused model: not with fp16 fixed."""
    if fuse == "on" and fixed.get("precision") == "fp16":
        c.fail("train.fuse", "on", "auto or off with `train.precision: fp16` (one loss "
               "scaler cannot serve several fused models); or precision fp32/bf16")


