"""The study's answer on its MLflow parent run, and where the MLflow UI shows it.

Every name the MLflow UI contract uses lives here: the experiment's kind, the parent run's
verdict metrics and tags, its description, the saved column view, and the runs-view link.
A runs table can then show and sort the answer without opening the report:

- metric ``verdict.<knob>.<level>[.<by>.<value>].diff`` (``diff_pp`` for accuracies, in
  percentage points), ``.ci_low``, ``.ci_high`` (``_pp`` likewise) and ``.n_pairs``;
- tag ``verdict.<knob>.<level>[.<by>.<value>]``: better, worse, equivalent or
  inconclusive (and ``study.verdict.<knob>.<level>`` for the whole study, as before);
- metric ``best.<metric>`` and tag ``study.best_config``: the best configuration;
- ``mlflow.note.content`` (the run's description) starting with the verdict sentences.

No Ray, no MLflow import here: plain names and values, written by the runner's writer.
"""

from __future__ import annotations

import json
import math
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from study.redact import redact_uri
from study.report.stats import Effect, scale, show_value

__all__ = ["EXPERIMENT_TAGS", "NOTE_TAG", "Answer", "answer_of", "experiment_view_tag",
           "note_text", "renote", "runs_view_url", "ui_base_url"]

NOTE_TAG = "mlflow.note.content"  # MLflow's run description
# MLflow 3 sorts experiments into GenAI and model-training ones by this tag (its UI writes it
# when a user picks the type); 3.17's UI opens on the type chosen in its side bar or in the
# link's `workflowType`, so the link below names it too.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # a saved runs-table view (columns shown)
VIEW_TAG_MAX = 20_000  # MLflow's limit on an experiment tag's value
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
_KEY_PART_CHARS = 80  # MLflow keys are at most 250 characters


@dataclass
class Answer:
    """The parent run's answer: metrics (numbers a runs table sorts) and tags (words)."""

    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def columns(self) -> list[str]:
        """The runs-table columns that show it, in the MLflow UI's column-key form: the
        verdicts, the best value, then each comparison's numbers."""
        best = sorted(k for k in self.metrics if k.startswith("best."))
        return ([f"tags.`{k}`" for k in self.tags if k.startswith("verdict.")]
                + [f"metrics.`{k}`" for k in best]
                + [f"metrics.`{k}`" for k in self.metrics if k not in best])


def key_part(value: Any) -> str:
    """`value` as part of an MLflow tag or metric key: its text if it holds only letters,
    digits, "_", "-" and "." (what every MLflow store takes in a key), else those characters
    ("_" for the others) and a hash of the whole text, so two values never share a key (a
    per-layer rule "0,1..." -> "0_1...-" + 8 hex digits; "a/b" and "a_b" stay apart)."""
    import hashlib

    text = str(value)
    if len(text) <= _KEY_PART_CHARS and set(text) <= _KEY_CHARS:
        return text
    safe = "".join(ch if ch in _KEY_CHARS else "_" for ch in text[:_KEY_PART_CHARS])
    return f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _part(value: Any) -> str:
    return key_part(show_value(value))


def verdict_key(effect: Effect) -> str:
    """``verdict.<knob>.<level>`` and, for a group, ``.<by>.<value>``."""
    key = f"verdict.{_part(effect.knob)}.{_part(effect.level)}"
    if effect.group != "all":
        by, _, value = effect.group.partition("=")
        key += f".{_part(by)}.{_part(value)}"
    return key


def answer_of(effects: Iterable[Effect], *, metric: str,
              best: tuple[int, float] | None = None) -> Answer:
    """The answer from the report's effects and the best configuration (index, value of
    `metric`); non-finite numbers (an interval with one pair) are left out."""
    out = Answer()
    for e in effects:
        key = verdict_key(e)
        if not e.n:
            out.tags[key] = "no usable pairs"
            continue
        out.tags[key] = e.verdict
        if e.group == "all":
            out.tags[f"study.verdict.{e.knob}.{key_part(e.level)}"] = e.verdict
        s = scale(e.metric)
        unit = "_pp" if s == 100.0 else ""
        for name, value in ((f"diff{unit}", e.mean * s), (f"ci_low{unit}", e.ci_low * s),
                            (f"ci_high{unit}", e.ci_high * s), ("n_pairs", float(e.n))):
            if math.isfinite(value):
                out.metrics[f"{key}.{name}"] = _shown(value)
    if best is not None and math.isfinite(best[1]):
        out.metrics[f"best.{key_part(metric)}"] = _shown(best[1])
        out.tags["study.best_config"] = str(best[0])
        out.tags[f"study.best_{metric}"] = f"{best[1]:.6g}"
    return out


def _shown(value: float) -> float:
    """`value` to 4 significant digits, as a table shows it (the report has them all)."""
    return float(f"{value:.4g}")


def note_text(question: str, summary: str, effects: Iterable[Effect] = ()) -> str:
    """The parent run's description: the verdict sentences (the whole study's) first, then
    the question and the spec's summary."""
    return _verdict_head(effects) + f"**{question}**\n\n```\n{summary}\n```"


def renote(note: str, question: str, effects: Iterable[Effect]) -> str:
    """A description written by :func:`note_text` with its verdict sentences replaced by
    those of `effects` (a rebuilt report's); the question and summary stay as written."""
    start = note.find(f"**{question}**")
    return _verdict_head(effects) + (note[start:] if start >= 0 else f"**{question}**")


def _verdict_head(effects: Iterable[Effect]) -> str:
    sentences = [f"**{e.sentence()}**" for e in effects if e.group == "all"]
    return "\n\n".join(sentences) + "\n\n" if sentences else ""


def experiment_view_tag(execution: str, answer: Answer) -> tuple[str, str]:
    """An experiment tag holding a saved runs-table view (the MLflow UI's shared view) that
    shows the answer's columns first, wide enough for their names; named after
    `execution`, the link's ``viewStateShareKey``."""
    columns = answer.columns()
    while True:
        view = json.dumps({
            "selectedColumns": columns, "columnOrder": columns,
            "columnWidths": {c: 7 * len(c.split("`")[1]) + 40 for c in columns}})  # px
        if len(view) <= VIEW_TAG_MAX or not columns:
            return VIEW_TAG_PREFIX + execution, view
        columns = columns[:-1]


def ui_base_url(tracking_uri: str) -> str:
    """The MLflow UI of a tracking store: the server itself (without credentials), or what
    `mlflow ui` serves by default for a database or file store."""
    if not tracking_uri.startswith(("http://", "https://")):
        return LOCAL_UI
    parts = urllib.parse.urlsplit(tracking_uri)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # a port that is no number: shown as the URI has it, redacted
        return redact_uri(tracking_uri).rstrip("/")
    return f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}"


def runs_view_url(tracking_uri: str, experiment_id: str, view: str | None = None) -> str:
    """The link that opens the experiment's runs table (not MLflow 3's GenAI overview);
    with `view`, the saved column view of that name (an execution id)."""
    query: Mapping[str, str] = {"workflowType": "machine_learning",
                                **({"viewStateShareKey": view} if view else {})}
    eid = urllib.parse.quote(str(experiment_id), safe="")
    return f"{ui_base_url(tracking_uri)}/#/experiments/{eid}/runs?" \
           f"{urllib.parse.urlencode(query)}"
