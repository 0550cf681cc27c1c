"""The sequential phase: after the search, look at every comparison and add seeds to the
unsettled ones until each is settled or has its maximum of pairs.

A pure function of the runs that ended (rows as ``study.report.stats`` reads them, each
with ``look``: 0 for the search's runs, k for the runs added after look k). Look k sees the
runs with ``look < k``; the pairs it adds are a function of those runs alone. So the
searcher (as the runs end), a resumed searcher (from the runs MLflow kept) and the report
(from MLflow's children) all follow the same path, and a resume re-plans exactly the runs
that a killed driver had planned.

A comparison is one non-reference level against the reference, over all configurations or
over one `verdict.by` group (e.g. norm=batch). It is settled by the first look whose
decision is not "continue" (``study.report.sequential.look``) and keeps that decision; pairs added
later for another comparison are not looked at again for it. Added pairs are existing
configurations of the comparison's group (those with a usable search pair), round-robin
(fewest added seeds first), each with a new seed (one above the configuration's highest)
and every level of the compared knob: the pairing contract of the search's runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from study.report.sequential import Design, Look, look, verdict
from study.report.stats import (
    Effect,
    display_unit,
    group_key,
    paired_effects,
    rows_by_pair,
    show_value,
    usable_value,
)
from study.search.space import run_key
from study.spec import StudySpec

__all__ = ["Comparison", "LookPath", "Step", "design_of", "follow", "look_lines"]


@dataclass(frozen=True)
class Step:
    """One look at one comparison: look number `round` (1: after the search)."""

    round: int
    look: Look
    planned: int  # pairs it had that ended: usable ones and those with a failed arm
    excluded: int  # of those, pairs with a failed arm (no difference)


@dataclass
class Comparison:
    """One row of the verdict: `level` against the reference within `group`."""

    level: Any
    group: str  # "all" or e.g. "norm=batch"
    configs: tuple[int, ...]  # the configurations seeds may be added to
    steps: list[Step] = field(default_factory=list)
    decision: str = "continue"  # study.report.sequential.DECISIONS
    reason: str = ""

    @property
    def open(self) -> bool:
        return self.decision == "continue"

    @property
    def last(self) -> Look | None:
        return self.steps[-1].look if self.steps else None

    def label(self, spec: StudySpec) -> str:
        return (f"{spec.compare_knob}={show_value(self.level)} vs "
                f"{show_value(spec.compare_levels[0])}")


@dataclass
class LookPath:
    """The looks so far and what the next one waits for."""

    comparisons: list[Comparison]
    rounds: int  # looks taken
    added: list[dict[str, Any]]  # runs planned after the last look (empty: finished)
    pending: list[dict[str, Any]]  # of those, the runs that have not ended

    @property
    def finished(self) -> bool:
        return not self.added


def design_of(spec: StudySpec) -> Design:
    """The group-sequential design the spec asks for (`verdict.sequential`)."""
    sq = spec.sequential
    if sq is None:
        raise ValueError(f"{spec.source}: no `verdict.sequential` in this spec")
    return Design(alpha=spec.alpha, margin=spec.margin, max_pairs=sq.max_pairs,
                  looks=sq.looks, spending=sq.spending, min_pairs=sq.min_pairs)


def follow(rows: Iterable[Mapping[str, Any]], spec: StudySpec) -> LookPath:
    """Replay the looks over the ended runs `rows` (the search's all ended), as far as the
    runs go: look k + 1 happens once every run planned after look k has ended."""
    rows = list(rows)
    design = design_of(spec)
    search = [r for r in rows if _look_of(r) == 0]
    comparisons = _comparisons(search, spec)
    ended = {r["run_key"] for r in rows}
    k = 0
    while True:
        k += 1
        seen = [r for r in rows if _look_of(r) < k]
        effects = _effects(seen, spec)
        for c in comparisons:
            if c.open:
                _look_at(c, effects[(c.group, repr(c.level))], k, design)
        added = _plan(comparisons, effects, seen, spec, design, k)
        pending = [r for r in added if r["run_key"] not in ended]
        if not added or pending:
            return LookPath(comparisons, k, added, pending)


def _look_of(row: Mapping[str, Any]) -> int:
    return int(row.get("look") or 0)


def _comparisons(search: Sequence[Mapping[str, Any]], spec: StudySpec) -> list[Comparison]:
    """Every comparison, groups before "all" (the order seeds are planned in), each with
    the configurations that have a usable search pair for its level."""
    out = []
    effects = _effects(search, spec)
    groups = [g for by in spec.verdict_by for g in sorted({group_key(r, by) for r in search})]
    for group in [*groups, "all"]:
        for level in spec.compare_levels[1:]:
            e = effects.get((group, repr(level)))
            configs = sorted({cfg for cfg, _ in (e.pairs if e else ())})
            out.append(Comparison(level, group, tuple(configs)))
    return out


@dataclass(frozen=True)
class _Pairs:
    """A comparison's usable pairs at a look and its pairs with a failed arm."""

    diffs: tuple[float, ...]
    pairs: tuple[tuple[int, int], ...]  # (config, seed) of the usable ones
    excluded: int


def _effects(rows: Sequence[Mapping[str, Any]], spec: StudySpec,
             ) -> dict[tuple[str, str], _Pairs]:
    """(group, repr(level)) -> the comparison's pairs in `rows`."""
    out: dict[tuple[str, str], _Pairs] = {}
    kw = dict(knob=spec.compare_knob, levels=spec.compare_levels, metric=spec.verdict_metric,
              margin=spec.margin, mode=spec.verdict_mode, alpha=spec.alpha)
    sets: list[tuple[str | None, list[Effect]]] = [(None, paired_effects(rows, **kw))]
    sets += [(by, paired_effects(rows, by=by, **kw)) for by in spec.verdict_by]
    for by, effects in sets:
        for e in effects:
            if by is not None and e.group == "all":
                continue
            grows = rows if e.group == "all" else [r for r in rows if group_key(r, by) == e.group]
            out[(e.group, repr(e.level))] = _Pairs(e.differences,
                                                   _usable_pairs(grows, spec, e.level),
                                                   e.excluded_pairs)
    return out


def _usable_pairs(rows: Sequence[Mapping[str, Any]], spec: StudySpec, level: Any,
                  ) -> tuple[tuple[int, int], ...]:
    ref = repr(spec.compare_levels[0])
    return tuple(sorted(
        key for key, block in rows_by_pair(rows).items()
        if usable_value(block.get(ref), spec.verdict_metric) is not None
        and usable_value(block.get(repr(level)), spec.verdict_metric) is not None))


def _look_at(c: Comparison, pairs: _Pairs, k: int, design: Design) -> None:
    """Look k at comparison `c` (none if it has no new usable pair since its last look)."""
    n = len(pairs.diffs)
    history = [s.look.n for s in c.steps]
    if history and n <= history[-1]:
        return
    step = look(design, pairs.diffs, history)
    c.steps.append(Step(k, step, n + pairs.excluded, pairs.excluded))
    if step.decision == "inconclusive":
        c.decision, c.reason = step.decision, f"at the maximum of {n} pairs"
    elif step.decision != "continue":
        c.decision = step.decision
        c.reason = f"settled at look {k} with {n} pairs"


def _plan(comparisons: Sequence[Comparison], effects: Mapping[tuple[str, str], _Pairs],
          seen: Sequence[Mapping[str, Any]], spec: StudySpec, design: Design, k: int,
          ) -> list[dict[str, Any]]:
    """The runs to add after look k: for each open comparison, the pairs that bring it to
    its next look's pair count (at most max_pairs), shared with the other comparisons of
    configurations they cover. Closes the comparisons that cannot get more."""
    top: dict[int, int] = {}  # config -> its highest seed so far
    for r in seen:
        top[r["config"]] = max(top.get(r["config"], r["seed"]), r["seed"])
    added: dict[int, int] = {}  # config -> seeds added by this look
    start = dict(top)
    before = {cfg: len({r["seed"] for r in seen if r["config"] == cfg and _look_of(r) > 0})
              for cfg in top}  # seeds the sequential phase added before this look
    for c in comparisons:
        if not c.open:
            continue
        now = effects[(c.group, repr(c.level))]  # its pairs, also if it had no look now
        n, planned = len(now.diffs), len(now.diffs) + now.excluded
        want = (c.steps[-1].look.next_pairs or design.max_pairs) - n
        room = design.max_pairs - planned
        if room <= 0:
            c.decision = "inconclusive"
            c.reason = (f"at the maximum: {planned} pairs ran, {now.excluded} of them with "
                        "a failed arm")
            continue
        if not c.configs:
            c.decision = "inconclusive"
            c.reason = "no configuration of this group has a usable pair to add seeds to"
            continue
        covered = sum(added.get(cfg, 0) for cfg in c.configs)
        for _ in range(min(want, room) - covered):
            cfg = min(c.configs, key=lambda x: (before[x] + added.get(x, 0), x))
            top[cfg] += 1
            added[cfg] = added.get(cfg, 0) + 1
    return [run for cfg in sorted(added)
            for seed in range(start[cfg] + 1, start[cfg] + 1 + added[cfg])
            for run in _pair_runs(spec, cfg, seed, k)]


def _pair_runs(spec: StudySpec, cfg: int, seed: int, k: int) -> list[dict[str, Any]]:
    """The identity of a new pair's runs (every level); the searcher adds the knobs."""
    return [{"run_key": run_key(cfg, level, seed, spec.compare_knob), "config": cfg,
             "seed": seed, "level": level, "look": k} for level in spec.compare_levels]


def look_lines(path: LookPath, spec: StudySpec, since: int = 0) -> list[str]:
    """One line per look after look `since` at each comparison, then what comes next."""
    s, unit = display_unit(spec.verdict_metric)
    lines = []
    for k in range(since + 1, path.rounds + 1):
        for c in path.comparisons:
            for step in (st for st in c.steps if st.round == k):
                lk = step.look
                if lk.index == 0:
                    body = f"n={lk.n}: below {spec.sequential.min_pairs} pairs, no look yet"  # type: ignore[union-attr]
                else:
                    (lo, hi), (elo, ehi) = lk.interval, lk.eq_interval
                    body = (f"n={lk.n} mean {_num(lk.mean * s)}{unit} RCI "
                            f"[{_num(lo * s)}, {_num(hi * s)}] (equivalence "
                            f"[{_num(elo * s)}, {_num(ehi * s)}] vs ±{spec.margin * s:g}) "
                            f"boundary t={lk.boundary:.2f}: "
                            f"{verdict(lk.decision, spec.verdict_mode)}")
                lines.append(f"look {k}: {c.label(spec)} ({c.group}) {body}")
    if path.added and path.pending:
        pairs = len(path.added) // len(spec.compare_levels)
        lines.append(f"look {path.rounds}: adding {pairs} pair(s) ({len(path.added)} runs) "
                     f"for look {path.rounds + 1}")
    elif not path.added:
        lines.append("sequential phase finished: " + "; ".join(
            f"{c.label(spec)} ({c.group}) {verdict(c.decision, spec.verdict_mode)}"
            for c in path.comparisons))
    return lines


def _num(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:+.2f}"
