"""The report's sequential verdict: the looks replayed from the runs, their table and plot,
the stopping reason per comparison, and the pairs a fixed-n design of the same power needs.

The path is rebuilt from the runs alone (``study.search.looks.follow`` over rows that carry
their `look`), so a report rebuilt from MLflow's children says what the running study said.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from study.records import ENDED
from study.report.figures import fig_png, pyplot
from study.report.sequential import fixed_n_same_power, simulate, verdict
from study.report.stats import Effect, ci_label, display_unit, paired_effects, show_value
from study.search.looks import Comparison, LookPath, design_of, follow
from study.spec import StudySpec

__all__ = ["fixed_n_pairs", "looks_json", "plot_looks", "sequential_blocks",
           "sequential_effects", "sequential_path", "sequential_table"]

Block = tuple[str, Any]
SIMULATED_STUDIES = 2000  # per comparison, for the pairs the design uses on average


def sequential_path(rows: Sequence[Mapping[str, Any]], spec: StudySpec) -> LookPath | None:
    """The looks so far, or None before the sequential phase (search runs still open)."""
    if spec.sequential is None or not spec.compare_knob:
        return None
    ended = [r for r in rows if r.get("status") in ENDED]
    if sum(1 for r in ended if not r.get("look")) < spec.total_runs:
        return None
    return follow(ended, spec)


def _word(c: Comparison, spec: StudySpec) -> str:
    """The comparison's verdict in the report's words (open: inconclusive so far)."""
    return "inconclusive" if c.open else verdict(c.decision, spec.verdict_mode)


def sequential_effects(path: LookPath, rows: Sequence[Mapping[str, Any]], spec: StudySpec,
                       ) -> list[Effect]:
    """One Effect per comparison at its last look (the one that settled it): the runs that
    look saw, its repeated confidence interval and its decision. Fixed-n p-values do not
    apply under optional stopping: NaN."""
    out = []
    for c in _display_order(path):
        k = c.steps[-1].round if c.steps else 1
        seen = [r for r in rows if int(r.get("look") or 0) < k and r.get("status") in ENDED]
        e = next(x for x in paired_effects(
            seen, knob=spec.compare_knob, levels=spec.compare_levels,  # type: ignore[arg-type]
            metric=spec.verdict_metric, margin=spec.margin, mode=spec.verdict_mode,
            by=c.group.split("=", 1)[0] if c.group != "all" else None, alpha=spec.alpha)
            if x.group == c.group and repr(x.level) == repr(c.level))
        lo, hi = c.last.interval if c.last and c.last.index else (math.nan, math.nan)
        out.append(dataclasses.replace(e, ci_low=lo, ci_high=hi, p_value=math.nan,
                                       tost_p=math.nan, verdict=_word(c, spec),
                                       pairs_needed=None))
    return out


def _display_order(path: LookPath) -> list[Comparison]:
    """"all" first, then the groups (the order the verdict tables use)."""
    return [c for c in path.comparisons if c.group == "all"] + \
        [c for c in path.comparisons if c.group != "all"]


def fixed_n_pairs(c: Comparison, spec: StudySpec) -> tuple[float, int | None] | None:
    """(pairs the design uses on average, pairs a fixed-n design needs to settle as often)
    at the comparison's last observed mean and spread, by simulation of the planned looks
    (seed 0); None without a finite spread."""
    lk = c.last
    if lk is None or not (math.isfinite(lk.sd) and lk.sd > 0 and math.isfinite(lk.mean)):
        return None
    design = design_of(spec)
    sim = simulate(design, lk.mean, lk.sd, SIMULATED_STUDIES, np.random.default_rng(0))
    power = min(sim.settled, 1 - 1 / SIMULATED_STUDIES)
    return sim.mean_pairs, fixed_n_same_power(design, lk.mean, lk.sd, power)


def _num(x: float, sign: bool = True) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:+.2f}" if sign else f"{x:.2f}"


def _interval(iv: tuple[float, float], s: float) -> str:
    return f"[{_num(iv[0] * s)}, {_num(iv[1] * s)}]"


def sequential_blocks(path: LookPath, effects: Sequence[Effect], spec: StudySpec) -> list[Block]:
    """The report's verdict section for a sequential study."""
    s, unit = display_unit(spec.verdict_metric)
    b: list[Block] = [("h2", "Verdict (sequential)")]
    shown = _display_order(path)
    b += [("p", "**" + _sentence(c, spec) + "**") for c in shown if c.group == "all"]
    if not path.finished:
        b.append(("p", f"The sequential phase is not over: look {path.rounds} added "
                       f"{len(path.added)} runs, {len(path.pending)} of them not ended "
                       "(`study resume` continues it)."))
    rows = []
    for c in shown:
        lk = c.last
        fixed = fixed_n_pairs(c, spec)
        rows.append([
            c.label(spec), c.group, str(len(c.steps)), str(lk.n if lk else 0),
            _num(lk.mean * s) if lk else "n/a",
            _interval(lk.interval, s) if lk else "n/a",
            _interval(lk.eq_interval, s) if lk else "n/a",
            f"{lk.boundary:.2f}" if lk and math.isfinite(lk.boundary) else "n/a",
            _word(c, spec), c.reason or "open",
            f"{fixed[1] if fixed[1] else '> ' + str(20 * spec.sequential.max_pairs)} "  # type: ignore[union-attr]
            f"(design: {fixed[0]:.0f} on average)" if fixed else "n/a"])
    b.append(("table", ([
        "comparison", "group", "looks", "pairs", f"mean diff{unit}",
        f"repeated {ci_label(spec.alpha)}", "equivalence RCI", "t boundary", "verdict",
        "stopping reason", "fixed-n pairs, same power"], rows)))
    b.append(("img", "looks.png"))
    b.append(("table", (["comparison", "group", "look", "pairs", f"mean{unit}",
                         f"RCI (difference){unit}", f"RCI (equivalence){unit}",
                         "t boundary", "z boundary", "alpha spent", "decision"],
                        _look_rows(path, spec, s))))
    b.append(("p", _method(spec)))
    return b


def _look_rows(path: LookPath, spec: StudySpec, s: float) -> list[list[str]]:
    rows = []
    for c in _display_order(path):
        for st in c.steps:
            lk = st.look
            if lk.index == 0:
                rows.append([c.label(spec), c.group, str(st.round), str(lk.n), "", "", "", "",
                             "", "", f"no look: below {spec.sequential.min_pairs} pairs"])  # type: ignore[union-attr]
                continue
            rows.append([c.label(spec), c.group, str(st.round), str(lk.n), _num(lk.mean * s),
                         _interval(lk.interval, s), _interval(lk.eq_interval, s),
                         f"{lk.boundary:.2f}", f"{lk.z_boundary:.2f}", f"{lk.spent:.2g}",
                         verdict(lk.decision, spec.verdict_mode)])
    return rows


def _sentence(c: Comparison, spec: StudySpec) -> str:
    s, unit = display_unit(spec.verdict_metric)
    what = c.label(spec) + ("" if c.group == "all" else f" ({c.group})")
    lk = c.last
    if lk is None or lk.index == 0:
        return f"{what}: {_word(c, spec)} ({c.reason or 'no look yet'})."
    eq = (f" (equivalence interval {_interval(lk.eq_interval, s)}{unit} inside "
          f"±{spec.margin * s:g}{unit})" if c.decision == "equivalent" else "")
    return (f"{what} changed {spec.verdict_metric} by {_num(lk.mean * s)}{unit}, repeated "
            f"{ci_label(spec.alpha)} {_interval(lk.interval, s)}{unit}{eq} at look "
            f"{c.steps[-1].round} with {lk.n} pairs: {_word(c, spec)} "
            f"({c.reason or 'open'}).")


def _method(spec: StudySpec) -> str:
    design = design_of(spec)  # ValueError without `verdict.sequential`
    return (design.method() + f" Here: alpha {spec.alpha:g}, margin ±"
            f"{spec.margin:g}, at most {design.max_pairs} pairs per comparison, {design.looks} "
            f"planned looks, no look before {design.min_pairs} pairs. The first look comes "
            "after the search; each later look comes once the pairs added after the previous "
            "one have ended. Added pairs are existing configurations of the comparison's group "
            "(round-robin) with new seeds and every level. A comparison keeps the decision "
            "of the look that settled it; pairs added later for another comparison are not "
            "looked at again for it. Each comparison (overall and per group) has its own "
            "error rates; there is no correction across comparisons. Optuna trials are "
            "immutable once told: a configuration's Optuna value is the mean over its "
            "search runs, and the runs added by the sequential phase are not told to Optuna. "
            "'Fixed-n pairs, same power': the fewest pairs of a one-look design that settles "
            "as often as this design does (simulated, planned looks, "
            f"{SIMULATED_STUDIES} studies, seed 0) at the last look's mean and spread.")


def sequential_table(path: LookPath, spec: StudySpec) -> str:
    """A short plain-text table of the sequential verdicts, for the terminal."""
    s, unit = display_unit(spec.verdict_metric)
    head = (f"{'comparison':<22} {'group':<12} {'looks':>5} {'n':>4} {'mean' + unit:>9}  "
            f"{'repeated ' + ci_label(spec.alpha):<18} {'equivalence RCI':<18} verdict")
    lines = [f"sequential verdict on {spec.verdict_metric} (margin ±{spec.margin * s:g}{unit}, "
             f"alpha {spec.alpha:g}, {spec.sequential.spending.replace('_', '-')} "  # type: ignore[union-attr]
             "spending):", head, "-" * len(head)]
    for c in _display_order(path):
        lk = c.last
        ok = lk is not None and lk.index > 0
        mean = _num(lk.mean * s) if ok else ""  # type: ignore[union-attr]
        ci = _interval(lk.interval, s) if ok else "n/a"  # type: ignore[union-attr]
        eq = _interval(lk.eq_interval, s) if ok else "n/a"  # type: ignore[union-attr]
        lines.append(f"{c.label(spec):<22} {c.group:<12} {len(c.steps):>5} "
                     f"{lk.n if lk else 0:>4} {mean:>9}  {ci:<18} {eq:<18} {_word(c, spec)}: "
                     f"{c.reason or 'open'}")
    lines += ["", *(_sentence(c, spec) for c in _display_order(path) if c.group == "all")]
    return "\n".join(lines)


def looks_json(path: LookPath, spec: StudySpec) -> list[dict[str, Any]]:
    """Every comparison's looks as plain data (the report's looks.json)."""
    def clean(x: Any) -> Any:
        if isinstance(x, float):
            return x if math.isfinite(x) else None
        if isinstance(x, tuple):
            return [clean(v) for v in x]
        return x

    return [{"level": show_value(c.level), "group": c.group, "decision": c.decision,
             "verdict": _word(c, spec), "reason": c.reason,
             "looks": [{"look": st.round, "planned_pairs": st.planned,
                        "excluded_pairs": st.excluded,
                        **{k: clean(v) for k, v in dataclasses.asdict(st.look).items()}}
                       for st in c.steps]} for c in _display_order(path)]


def plot_looks(path: LookPath, spec: StudySpec) -> bytes:
    """Per comparison: the repeated intervals against pairs (left, with the equivalence
    margin) and the t statistic against the boundaries (right)."""
    plt = pyplot()
    shown = [c for c in _display_order(path) if any(st.look.index for st in c.steps)]
    fig, axes = plt.subplots(max(1, len(shown)), 2, figsize=(11, 2.6 * max(1, len(shown))),
                             squeeze=False)
    s, unit = display_unit(spec.verdict_metric, parens=True)
    for (left, right), c in zip(axes, shown, strict=False):
        looks = [st.look for st in c.steps if st.look.index]
        n = np.array([lk.n for lk in looks], dtype=float)
        mean = np.array([lk.mean for lk in looks]) * s
        top = design_of(spec).max_pairs
        shift = max(0.2, 0.01 * top)  # the equivalence interval beside the other
        for iv, dx, color, label in ((lambda lk: lk.interval, 0.0, "#0969da", "RCI (difference)"),
                                     (lambda lk: lk.eq_interval, shift, "#1a7f37",
                                      "RCI (equivalence)")):
            lo = np.array([iv(lk)[0] for lk in looks]) * s
            hi = np.array([iv(lk)[1] for lk in looks]) * s
            left.errorbar(n + dx, mean, yerr=[mean - lo, hi - mean], fmt="o", color=color,
                          capsize=3, label=label)
        left.axhspan(-spec.margin * s, spec.margin * s, color="#cfe8cf", alpha=0.6,
                     label="equivalence margin")
        left.axhline(0, color="#555", lw=1)
        left.set_title(f"{c.label(spec)} ({c.group}): {_word(c, spec)}", fontsize=9)
        left.set_ylabel(f"difference{unit}")
        se = np.array([lk.sd / math.sqrt(lk.n) if lk.sd > 0 else math.nan for lk in looks])
        right.plot(n, np.abs(mean / s) / se, "o-", color="#0969da", label="|mean| / se")
        right.plot(n, [lk.boundary for lk in looks], "s--", color="#0969da",
                   label="boundary (difference)")
        right.plot(n, (spec.margin - np.abs(mean / s)) / se, "o-", color="#1a7f37",
                   label="(margin - |mean|) / se")
        right.plot(n, [lk.eq_boundary for lk in looks], "^--", color="#1a7f37",
                   label="boundary (equivalence)")
        right.set_ylabel("t: crossing the boundary settles")
        for ax in (left, right):
            ax.set_xlim(0, top * 1.05)
            ax.set_xlabel("pairs")
    if shown:
        axes[0][0].legend(fontsize=7, loc="best")
        axes[0][1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig_png(fig)
