"""The study report: verdicts with confidence intervals, curves, importance, counts.

Built from a table of runs (the finished study's, or one read back from MLflow) and the
Optuna study; written as Markdown and a self-contained HTML page with PNG plots, logged to
the parent MLflow run. No Ray here.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.records import (
    RunStatus,
    StudyStatus,
    check_execution_id,
    check_study_ref,
)
from study.redact import redact_text, redact_uri, usable_uri
from study.report.budget_report import budget_blocks, budget_curves, plot_budget
from study.report.curve_plot import plot_curves
from study.report.figures import fig_png, pyplot
from study.report.pareto import level_fronts, pareto_blocks, plot_fronts
from study.report.sequential_report import (
    looks_json,
    plot_looks,
    sequential_blocks,
    sequential_effects,
    sequential_path,
    sequential_table,
)
from study.report.stats import (
    USABLE,
    Effect,
    ci_label,
    curves,
    display_unit,
    paired_effects,
    rows_by_pair,
    scale,
    show_value,
    status_counts,
    usable_value,
)
from study.spec import StudySpec

__all__ = ["Report", "ReportInput", "build_report", "importance", "rebuild",
           "verdict_table"]

IMPORTANCE_EVALUATOR = "fANOVA (optuna.importance.FanovaImportanceEvaluator, seed 0)"


@dataclass
class ReportInput:
    spec: StudySpec
    execution: str
    rows: list[dict[str, Any]]
    importance: dict[str, float] | None = None
    importance_note: str = ""
    parent_run_id: str | None = None
    tracking_uri: str = ""
    status: str = StudyStatus.FINISHED


@dataclass
class Report:
    title: str
    effects: list[Effect]
    counts: dict[str, int]
    markdown: str
    html: str
    images: dict[str, bytes] = field(default_factory=dict)
    path: Any = None  # study.search.looks.LookPath of a sequential study (None: none)
    looks: list[dict[str, Any]] = field(default_factory=list)  # written as looks.json

    def write(self, folder: str | Path) -> Path:
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(self.markdown)
        (out / "report.html").write_text(self.html)
        for name, png in self.images.items():
            (out / name).write_bytes(png)
        (out / "effects.json").write_text(json.dumps([_effect_json(e) for e in self.effects],
                                                     indent=1))
        if self.path is not None:
            (out / "looks.json").write_text(json.dumps(self.looks, indent=1))
        return out


def _effect_json(e: Effect) -> dict[str, Any]:
    d = {k: getattr(e, k) for k in e.__dataclass_fields__ if k != "differences"}
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in d.items()}


# --------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Parts:
    """What the report's sections and figures are drawn from, each computed once."""

    effects: list[Effect]
    counts: dict[str, int]
    path: Any  # the sequential path (None: a fixed-n verdict)
    budget: dict[str, Any]  # expected best score against budget, per level
    curve_sets: dict[str, Any]  # curves against depth and width
    fronts: dict[str, Any]  # Pareto fronts per level (a multi-objective study)


def build_report(inp: ReportInput) -> Report:
    spec, rows = inp.spec, inp.rows
    path = sequential_path(rows, spec)
    parts = _Parts(
        effects=sequential_effects(path, rows, spec) if path is not None else _effects(inp),
        counts=status_counts(rows), path=path,
        budget=budget_curves(rows, spec) if spec.compare_knob else {},
        curve_sets=_curve_sets(inp),
        fronts=_fronts(inp) if spec.multi_objective else {})
    blocks = _blocks_of(inp, parts)
    images = _images(inp, parts)
    title = f"Study report: {spec.name}"
    return Report(title=title, effects=parts.effects, counts=parts.counts,
                  markdown=_markdown(title, blocks), html=_html(title, blocks, images),
                  images=images, path=path,
                  looks=looks_json(path, spec) if path is not None else [])


def _effects(inp: ReportInput) -> list[Effect]:
    """The fixed-n paired effects: overall, then per `verdict.by` group."""
    spec, rows = inp.spec, inp.rows
    if not spec.compare_knob:
        return []
    effects = paired_effects(rows, knob=spec.compare_knob, levels=spec.compare_levels,
                             metric=spec.verdict_metric, margin=spec.margin,
                             mode=spec.verdict_mode, alpha=spec.alpha)
    for by in spec.verdict_by:
        effects += [e for e in paired_effects(
            rows, knob=spec.compare_knob, levels=spec.compare_levels,
            metric=spec.verdict_metric, margin=spec.margin, mode=spec.verdict_mode,
            by=by, alpha=spec.alpha) if e.group != "all"]
    return effects


def _curve_sets(inp: ReportInput) -> dict[str, Any]:
    """Curves against depth and width, where the runs vary them."""
    spec, rows = inp.spec, inp.rows
    metric = spec.verdict_metric if spec.compare_knob else spec.metric
    return {x: curves(rows, x=x, metric=metric, split=_curve_split(spec, x), alpha=spec.alpha)
            for x in ("depth", "width") if len({r.get(f"param.{x}") for r in rows}) > 1}


def _images(inp: ReportInput, parts: _Parts) -> dict[str, bytes]:
    """The report's figures, by file name."""
    spec = inp.spec
    images: dict[str, bytes] = {}
    if parts.path is not None:
        images["looks.png"] = plot_looks(parts.path, spec)
    elif parts.effects and any(e.n for e in parts.effects):
        images["effects.png"] = _plot_effects(parts.effects, spec)
    if parts.budget:
        images["budget.png"] = plot_budget(parts.budget, spec)
    if parts.curve_sets:
        images["curves.png"] = _plot_curves(parts.curve_sets, spec)
    if inp.importance:
        images["importance.png"] = _plot_importance(inp.importance)
    if spec.multi_objective:
        images["pareto.png"] = fig_png(plot_fronts(parts.fronts, spec.objectives, pyplot()))
    return images


def _curve_split(spec: StudySpec, x: str | None = None) -> tuple[str, ...]:
    """The knobs a curve against `x` is split by: residual and norm where they vary, and
    on a grid the other of depth and width (its every value is a point of the grid)."""
    split = [k for k in ("residual", "norm") if k in spec.space or k == spec.compare_knob]
    other = _other_curve_knob(spec, x)
    if spec.sampler == "grid" and other in spec.space:
        split.append(other)
    return tuple(split) or ("norm",)


def _other_curve_knob(spec: StudySpec, x: str | None) -> str:
    return {"depth": "width", "width": "depth"}.get(x or "", "")


def verdict_table(report: Report, spec: StudySpec) -> str:
    """A short plain-text table of the verdicts, for the terminal."""
    if not report.effects:
        return "(no compared knob: no verdict)"
    if report.path is not None:
        return sequential_table(report.path, spec)
    s, unit = display_unit(spec.verdict_metric)
    head = f"{'comparison':<34} {'group':<16} {'n':>4} {'mean diff' + unit:>13}  " \
           f"{ci_label(spec.alpha):<19} verdict"
    lines = [f"verdict on {spec.verdict_metric} (margin ±{spec.margin * s:g}{unit}, "
             f"paired t, TOST):", head, "-" * len(head)]
    for e in report.effects:
        comp = f"{spec.compare_knob}={show_value(e.level)} vs {show_value(e.reference)}"
        if e.n:
            ci = f"[{e.ci_low * s:+.2f}, {e.ci_high * s:+.2f}]" if e.n > 1 else "n/a"
            verdict = e.verdict + (f" (~{e.pairs_needed} pairs in all needed)"
                                   if e.pairs_needed else "")
            lines.append(f"{comp:<34} {e.group:<16} {e.n:>4} {e.mean * s:>+13.2f}  {ci:<19} "
                         f"{verdict}")
        else:
            lines.append(f"{comp:<34} {e.group:<16} {0:>4} {'':>13}  {'':<19} no usable pairs")
    head_effects = [e for e in report.effects if e.group == "all"]
    if head_effects:
        lines.append("")
        lines += [e.sentence() for e in head_effects]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Content: a list of blocks rendered to Markdown and to HTML
# --------------------------------------------------------------------------------------

Block = tuple[str, Any]  # ("h2", text) | ("p", text) | ("table", (head, rows)) | ("img", name)


def _blocks_of(inp: ReportInput, parts: _Parts) -> list[Block]:
    """The report's sections, in order."""
    spec = inp.spec
    effects, path = parts.effects, parts.path
    b: list[Block] = [("p", f"**Question.** {spec.question}")]
    b.append(("p", f"Execution `{inp.execution}` ({inp.status}); MLflow parent run "
                   f"`{inp.parent_run_id}` at `{redact_uri(inp.tracking_uri)}`; spec "
                   f"`{spec.source}`."))
    if path is not None:
        b += sequential_blocks(path, effects, spec)
    elif effects:
        b += _verdict_section(spec, effects)
    if spec.sequential and path is None:
        b.append(("p", "The sequential phase has not started: some search runs have not "
                       "ended (`study resume` continues the study)."))
    b += _runs_section(inp, parts.counts)
    b += _settings_section(spec)
    if parts.curve_sets:
        b += _curves_section(spec, parts.curve_sets)
    if spec.multi_objective:
        b += pareto_blocks(parts.fronts, spec.objectives)
    b += _importance_section(inp)
    if effects:
        b += _pairs_section(inp)
    if parts.budget:
        b += budget_blocks(parts.budget, spec)
    return b


def _fronts(inp: ReportInput) -> dict[str, Any]:
    """The Pareto front of each level of the compared knob (a multi-objective study)."""
    spec = inp.spec
    return level_fronts(inp.rows, spec.objectives, spec.compare_knob, list(spec.space))


def _verdict_section(spec: StudySpec, effects: Sequence[Effect]) -> list[Block]:
    s, unit = display_unit(spec.verdict_metric)
    b: list[Block] = [("h2", "Verdict")]
    b += [("p", "**" + e.sentence() + "**") for e in effects if e.group == "all"]
    rows = []
    for e in effects:
        rows.append([
            f"{spec.compare_knob}={show_value(e.level)} vs {show_value(e.reference)}",
            e.group, str(e.n),
            _f(e.mean_reference * s), _f(e.mean_level * s), _f(e.mean * s, sign=True),
            f"[{_f(e.ci_low * s, sign=True)}, {_f(e.ci_high * s, sign=True)}]",
            _p(e.p_value), _p(e.tost_p), e.verdict + (f" (~{e.pairs_needed} pairs in all)"
                                                      if e.pairs_needed else ""),
            str(e.excluded_pairs), str(e.diverged_pairs)])
    b.append(("table", ([
        "comparison", "group", "pairs", f"mean ref{unit}", f"mean level{unit}",
        f"diff{unit}", ci_label(spec.alpha), "p (diff)", "p (TOST)", "verdict", "excluded",
        "diverged"], rows)))
    b.append(("img", "effects.png"))
    b.append(("p", _method(spec)))
    return b


def _runs_section(inp: ReportInput, counts: Mapping[str, int]) -> list[Block]:
    spec = inp.spec
    per_level: dict[str, dict[str, int]] = {}
    for r in inp.rows:
        lv = show_value(r.get("level")) if spec.compare_knob else "-"
        per_level.setdefault(lv, {}).setdefault(str(r.get("status")), 0)
        per_level[lv][str(r.get("status"))] += 1
    statuses = [RunStatus.COMPLETED, RunStatus.DIVERGED, RunStatus.PRUNED, RunStatus.FAILED,
                RunStatus.STOPPED, RunStatus.RUNNING]
    total = sum(counts.values())
    return [
        ("h2", "Runs"),
        ("table", ([spec.compare_knob or "level", *statuses, "total"], [
            [lv, *(str(c.get(st, 0)) for st in statuses), str(sum(c.values()))]
            for lv, c in per_level.items()])),
        ("p", f"{total} runs: " + ", ".join(f"{v} {k}" for k, v in counts.items())
         + f" (planned by the search: {spec.total_runs}"
         + (f"; added by the sequential phase: {sum(1 for r in inp.rows if r.get('look'))}"
            if spec.sequential else "")
         + "). Failed runs carry no value; diverged runs "
         "(loss NaN/inf or above 100 x ln(classes)) keep the value they reached."),
    ]


def _settings_section(spec: StudySpec) -> list[Block]:
    fixed = ", ".join(f"`{k}={show_value(v)}`" for k, v in spec.fixed.items())
    space = "; ".join(f"`{k}`: {d.describe()}" for k, d in spec.space.items()) or "none"
    ds = spec.dataset
    return [("h2", "Settings"), (
        "p", f"Dataset `{ds.name}`" + (f" (`{ds.path}`)" if ds.path else "")
        + f", validation fraction {ds.val_fraction:g}, split seed {ds.split_seed}"
        + (f", first {ds.limit} training examples" if ds.limit else "")
        + f". Model `{spec.model}`. Fixed: {fixed}. Searched: {space}. "
        f"Sampler `{spec.sampler}` (seed {spec.seed}), {spec.trials} configurations x "
        f"{len(spec.levels)} levels x {spec.repeats} seeds. Weight init "
        f"`{show_value(spec.fixed.get('init', 'searched'))}`, residual branch init "
        f"`{show_value(spec.fixed.get('branch_init', 'searched'))}` and learning rate "
        f"`{show_value(spec.fixed.get('lr', 'searched'))}` decide whether deep nets train at "
        "all: read every number with them.")]


def _curves_section(spec: StudySpec, curve_sets: Mapping[str, Any]) -> list[Block]:
    s, unit = display_unit(spec.verdict_metric)
    metric = spec.verdict_metric if spec.compare_knob else spec.metric
    b: list[Block] = [
        ("h2", "Depth and width"),
        ("p", f"Mean {metric} with the {ci_label(spec.alpha)} of the mean (t, over runs) at "
         "every point, against "
         + "; against ".join(f"{x}: one curve per value of "
                             + " x ".join(_curve_split(spec, x)) for x in curve_sets)
         + ". Failed runs left out; n is the runs at each point."),
        ("img", "curves.png")]
    for x, series in curve_sets.items():
        rows = [[label, str(p.x), _f(p.mean * s), _f(p.sd * s),
                 f"[{_f(p.ci_low * s)}, {_f(p.ci_high * s)}]", str(p.n)]
                for label, pts in series.items() for p in pts]
        b.append(("table", (["series", x, f"mean{unit}", f"sd{unit}",
                             f"{ci_label(spec.alpha)}{unit}", "runs"], rows)))
    return b


def _importance_section(inp: ReportInput) -> list[Block]:
    if not inp.importance:
        return [("h2", "Parameter importance"),
                ("p", f"Not computed: {inp.importance_note or 'no Optuna study'}.")]
    return [("h2", "Parameter importance"),
            ("p", f"Evaluator: {IMPORTANCE_EVALUATOR}, over the Optuna trials (one per "
             f"configuration, value = mean {inp.spec.metric} over its runs)."),
            ("img", "importance.png"),
            ("table", (["knob", "importance"], [[k, f"{v:.3f}"] for k, v in
                                                inp.importance.items()]))]


def _pairs_section(inp: ReportInput) -> list[Block]:
    spec = inp.spec
    s = scale(spec.verdict_metric)
    b: list[Block] = [("h2", "Pairs (every number above comes from these runs)")]
    ref = spec.compare_levels[0]
    pairs = sorted(rows_by_pair(inp.rows).items(), key=lambda kv: (kv[0][0], kv[0][1]))
    for lvl in spec.compare_levels[1:]:
        rows = []
        for (cfg, seed), block in pairs:
            a, c = block.get(repr(ref)), block.get(repr(lvl))
            rows.append([str(cfg), str(seed), *_arm(a, spec.verdict_metric, s),
                         *_arm(c, spec.verdict_metric, s), _diff(a, c, spec, s)])
        b.append(("table", (["config", "seed", f"{show_value(ref)}: run", "status", "value",
                             f"{show_value(lvl)}: run", "status", "value", "diff"], rows)))
    return b


def _method(spec: StudySpec) -> str:
    return (f"Method: a pair is one configuration and one seed (same initial values for "
            f"every shared parameter, same mini-batch order, same data split); the "
            f"difference is {spec.verdict_metric}(level) - {spec.verdict_metric}(reference "
            f"{spec.compare_knob}={show_value(spec.compare_levels[0])}) at the last epoch. Mean "
            f"with a "
            f"two-sided {100 * (1 - spec.alpha):g}% paired-t confidence interval; equivalence "
            f"by two one-sided t-tests (TOST, alpha {spec.alpha:g}) against ±"
            f"{spec.margin:g}; *better*/*worse* when the interval excludes 0, *equivalent* "
            "when TOST passes, else *inconclusive* (with the pairs a normal approximation "
            "says would settle it). A pair with a failed or missing arm is excluded and "
            "counted; no correction for multiple comparisons across levels or groups.")


def _arm(row: Mapping[str, Any] | None, metric: str, s: float) -> list[str]:
    if row is None:
        return ["(missing)", "-", "-"]
    v = row.get(metric)
    val = _f(float(v) * s) if isinstance(v, (int, float)) and row.get("status") in USABLE \
        else "-"
    rid = row.get("mlflow_run_id") or ""
    return [f"{row.get('run_key')}" + (f" ({str(rid)[:8]})" if rid else ""),
            str(row.get("status")), val]


def _diff(a: Mapping | None, c: Mapping | None, spec: StudySpec, s: float) -> str:
    va, vc = usable_value(a, spec.verdict_metric), usable_value(c, spec.verdict_metric)
    return "excluded" if va is None or vc is None else _f((vc - va) * s, sign=True)


def _f(x: float, sign: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:+.2f}" if sign else f"{x:.2f}"


def _p(p: float) -> str:
    return "n/a" if not math.isfinite(p) else f"{p:.3g}"


def _markdown(title: str, blocks: Sequence[Block]) -> str:
    out = [f"# {title}", ""]
    for kind, val in blocks:
        if kind == "h2":
            out += [f"## {val}", ""]
        elif kind == "p":
            out += [val, ""]
        elif kind == "img":
            out += [f"![{val}]({val})", ""]
        elif kind == "table":
            head, rows = val
            out.append("| " + " | ".join(head) + " |")
            out.append("|" + "---|" * len(head))
            out += ["| " + " | ".join(r) + " |" for r in rows]
            out.append("")
    return "\n".join(out)


def _inline_md(text: str) -> str:
    """The little Markdown the blocks use (**bold**, `code`, *em*) as HTML."""
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    t = re.sub(r"`(.+?)`", r"<code>\1</code>", t)
    return re.sub(r"\*(.+?)\*", r"<em>\1</em>", t)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid
#ccc;padding:.25em .5em;text-align:right}th{background:#f4f4f4}td:first-child,th:first-child
{text-align:left}img{max-width:100%}code{background:#f4f4f4;padding:0 .2em}"""


def _html(title: str, blocks: Sequence[Block], images: Mapping[str, bytes]) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
           f"</title><style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for kind, val in blocks:
        if kind == "h2":
            out.append(f"<h2>{html.escape(val)}</h2>")
        elif kind == "p":
            out.append(f"<p>{_inline_md(val)}</p>")
        elif kind == "img" and val in images:
            data = base64.b64encode(images[val]).decode()
            out.append(f"<img alt='{val}' src='data:image/png;base64,{data}'>")
        elif kind == "table":
            head, rows = val
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
                       + "</tr>")
            out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                    for r in rows]
            out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


# --------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------


def _plot_effects(effects: Sequence[Effect], spec: StudySpec) -> bytes:
    plt = pyplot()
    s, unit = display_unit(spec.verdict_metric, parens=True)
    shown = [e for e in effects if e.n]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(shown) + 1.6))
    ax.axvspan(-spec.margin * s, spec.margin * s, color="#cfe8cf", label="equivalence margin")
    ax.axvline(0, color="#555", lw=1)
    colors = {"better": "#1a7f37", "worse": "#cf222e", "equivalent": "#0969da",
              "inconclusive": "#9a6700"}
    for i, e in enumerate(shown):
        y = len(shown) - 1 - i
        jitter = [(y - 0.25 + 0.5 * ((k * 0.618) % 1)) for k in range(len(e.differences))]
        ax.scatter([d * s for d in e.differences], jitter, s=8, color="#999", zorder=2)
        lo = e.ci_low if math.isfinite(e.ci_low) else e.mean
        hi = e.ci_high if math.isfinite(e.ci_high) else e.mean
        ax.errorbar(e.mean * s, y, xerr=[[(e.mean - lo) * s], [(hi - e.mean) * s]], fmt="o",
                    color=colors[e.verdict], capsize=4, zorder=3)
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels([f"{show_value(e.level)} vs {show_value(e.reference)} ({e.group}, n={e.n}): "
                        f"{e.verdict}" for e in reversed(shown)])
    ax.set_xlabel(f"paired difference in {spec.verdict_metric}{unit}: mean, "
                  f"{ci_label(spec.alpha)}, pairs")
    ax.set_title(f"{spec.compare_knob}: effect on {spec.verdict_metric}")
    ax.legend(loc="lower right", fontsize=8)
    return fig_png(fig)


def _plot_curves(curve_sets: Mapping[str, Any], spec: StudySpec) -> bytes:
    metric = spec.verdict_metric if spec.compare_knob else spec.metric
    by_other = {x: _other_curve_knob(spec, x) in _curve_split(spec, x) for x in curve_sets}
    return fig_png(plot_curves(curve_sets, by_other, metric, scale(metric),
                                ci_label(spec.alpha), pyplot()))


def _plot_importance(imp: Mapping[str, float]) -> bytes:
    plt = pyplot()
    items = sorted(imp.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(items) + 1.2))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#0969da")
    ax.set_xlabel("importance (fANOVA)")
    return fig_png(fig)


# --------------------------------------------------------------------------------------
# Reading back from the stores
# --------------------------------------------------------------------------------------


def importance(storage: Any, study_name: str) -> tuple[dict[str, float] | None, str]:
    """Parameter importance over the study's complete trials, or why it is not available."""
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
        done = [t for t in study.get_trials(deepcopy=False)
                if t.state == optuna.trial.TrialState.COMPLETE]
        if len(done) < 2:
            return None, f"{len(done)} complete trial(s); at least 2 are needed"
        ev = optuna.importance.FanovaImportanceEvaluator(seed=0)
        # a multi-objective study: the importance for the first objective (`metric[0]`)
        first = (lambda t: t.values[0]) if len(study.directions) > 1 else None
        imp = optuna.importance.get_param_importances(study, evaluator=ev, target=first)
        if not imp:
            return None, "no parameter varies across the complete trials"
        return {k: float(v) for k, v in imp.items()}, ""
    except Exception as e:  # reported in the document, never silently dropped
        return None, f"{type(e).__name__}: {redact_text(str(e))}"


def rebuild(name: str, *, tracking_uri: str | None = None, optuna_storage: str | None = None,
            execution: str | None = None, out_dir: str | Path | None = None,
            log_to_mlflow: bool = True) -> tuple[Report, StudySpec, Path]:
    """Rebuild a study's report from MLflow and Optuna alone (no Ray)."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from study.tracking.read import runs_from_mlflow
    from study.tracking.writer import reachable_tracking_uri

    check_study_ref(name, "study report: NAME")
    uri = reachable_tracking_uri(tracking_uri)
    spec, rows, parent = runs_from_mlflow(uri, name, execution)
    tags = parent.data.tags
    exe = check_execution_id(tags.get("study.execution"),
                             f"MLflow run {parent.info.run_id}: tag study.execution")
    storage = usable_uri(
        tags.get("optuna.storage") or spec.optuna_storage,
        [("STUDY_OPTUNA_STORAGE", os.environ.get("STUDY_OPTUNA_STORAGE"))],
        what=f"the Optuna storage of {exe}", explicit=("--optuna-storage", optuna_storage))
    imp, note = importance(storage, tags.get("optuna.study_name", exe))
    report = build_report(ReportInput(spec=spec, execution=exe, rows=rows, importance=imp,
                                      importance_note=note, parent_run_id=parent.info.run_id,
                                      tracking_uri=uri, status=tags.get("study.status", "?")))
    folder = Path(out_dir) if out_dir else Path(spec.results_dir) / exe / "report"
    report.write(folder)
    if log_to_mlflow:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        client.log_artifacts(parent.info.run_id, str(folder), "report")
        _log_answer(client, parent, spec, exe, report)
    return report, spec, folder


def _best_of_parent(parent: Any, spec: StudySpec) -> tuple[int, float] | None:
    """The best configuration the run tagged on its parent (index, value), if any."""
    tags = parent.data.tags
    try:
        return int(tags["study.best_config"]), float(tags[f"study.best_{spec.metric}"])
    except (KeyError, ValueError):
        return None


def _log_answer(client: Any, parent: Any, spec: StudySpec, execution: str,
                report: Report) -> None:
    """The rebuilt report's verdicts on the parent run, as the runner writes them
    (study.tracking.answer); the best configuration and the description's question and
    summary stay as the run left them."""
    from mlflow.entities import Metric, RunTag

    from study.tracking.answer import NOTE_TAG, answer_of, experiment_view_tag, renote

    answer = answer_of(report.effects, metric=spec.metric, best=_best_of_parent(parent, spec))
    note = renote(parent.data.tags.get(NOTE_TAG, ""), spec.question, report.effects)
    tags = {**answer.tags, NOTE_TAG: note}
    now = int(time.time() * 1000)
    client.log_batch(parent.info.run_id,
                     metrics=[Metric(k, v, now, 0) for k, v in answer.metrics.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    if answer.metrics or answer.tags:
        client.set_experiment_tag(parent.info.experiment_id,
                                  *experiment_view_tag(execution, answer))
