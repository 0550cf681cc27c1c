"""Reading a study back from MLflow: its parent run, its spec and one row per child run.

Names and ids that go into a filter string are checked first; the spec artifact is a
colleague's file, read with the bounded YAML reader; children are read page by page.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from study.errors import SpecError
from study.records import EXECUTION_RE, check_execution_id, check_run_id, check_study_ref
from study.redact import redact_uri
from study.spec import KNOBS, StudySpec, layer_values, load_yaml_text, parse_spec
from study.spec.layer_values import LayerValues

__all__ = ["runs_from_mlflow"]

PAGE = 1000  # runs per search request


def runs_from_mlflow(tracking_uri: str, name: str, execution: str | None = None,
                     ) -> tuple[StudySpec, list[dict[str, Any]], Any]:
    """The spec (from the parent run's spec.yaml), one row per child run, and the parent.

    `name` is a study name (its latest execution) or an execution id; both, and the ids read
    back, are checked before they go into a filter string.
    """
    from mlflow.tracking import MlflowClient

    check_study_ref(name, "study name or execution id")
    if execution:
        check_execution_id(execution, "execution id")
    client = MlflowClient(tracking_uri)
    parent = _parent(client, tracking_uri, name, execution)
    check_run_id(parent.info.run_id, "MLflow parent run id")
    spec = _spec(client, parent.info.run_id)
    children = _search_all(client, [parent.info.experiment_id],
                           f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    rows = [_row(c, spec) for c in children]
    rows.sort(key=lambda r: (r["config"], r["seed"], repr(r["level"])))
    return spec, rows, parent


def _parent(client: Any, tracking_uri: str, name: str, execution: str | None) -> Any:
    """The parent run of `execution`, else of the latest execution of study `name`."""
    execution = execution or (name if client.get_experiment_by_name(name) is None else None)
    exps = client.search_experiments()
    if execution and not EXECUTION_RE.fullmatch(execution):
        parents = []  # a name that is no study in MLflow: said below
    elif execution:
        parents = client.search_runs([e.experiment_id for e in exps],
                                     f"tags.`study.execution` = '{execution}'",
                                     order_by=["attributes.start_time DESC"], max_results=1)
    else:
        exp = client.get_experiment_by_name(name)
        parents = client.search_runs([exp.experiment_id], "tags.`study.execution` != ''",
                                     order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        known = sorted(repr(e.name)[:120] for e in exps if e.name != "Default")
        raise SpecError(f"no study execution {execution or name!r} in MLflow at "
                        f"{redact_uri(tracking_uri)}. Studies there: "
                        f"{', '.join(known[:50]) or 'none'}.")
    return parents[0]


def _spec(client: Any, run_id: str) -> StudySpec:
    """The spec a parent run keeps as its spec.yaml artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, "spec.yaml", tmp)
        source = f"MLflow run {run_id}: spec.yaml"
        raw = load_yaml_text(Path(path).read_bytes(), source)  # a colleague's store: bounded
    return parse_spec(raw, source=source, check_paths=False)


def _search_all(client: Any, experiment_ids: list[str], filter_string: str) -> list[Any]:
    """Every run the filter finds, page by page."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=PAGE,
                                  page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _row(child: Any, spec: StudySpec) -> dict[str, Any]:
    """One child run as a row (``RunRecord.as_row``'s keys, plus its MLflow status)."""
    p, t = child.data.params, child.data.tags
    params = {k: _typed(k, p.get(k)) for k in KNOBS if k in p}
    return {
        "run_key": t.get("study.run_key"), "config": int(t["study.config"]),
        "optuna_trial": int(t.get("study.optuna_trial", -1)),
        "level": params.get(spec.compare_knob) if spec.compare_knob else None,
        "seed": int(t["study.seed"]), "pair": t.get("study.pair"),
        "status": t.get("study.status", "unknown"),
        "epochs": int(t.get("study.epochs", 0)),
        "look": _look_tag(t.get("study.look", "0"), child.info.run_id),
        **{f"param.{k}": v for k, v in params.items()},
        **child.data.metrics, **_model_cost(p), "mlflow_run_id": child.info.run_id,
        "mlflow_status": child.info.status,
    }


def _look_tag(text: str, run_id: str) -> int:
    """A child's `study.look` tag (a store's text: checked, never trusted)."""
    if not (isinstance(text, str) and re.fullmatch(r"[0-9]{1,6}", text)):
        raise SpecError(f"MLflow run {run_id}: tag study.look: {text[:40]!r} is not a look "
                        "number. Allowed: 0 (a search run) or the look a run was added "
                        "after (1, 2, ...).")
    return int(text)


def _model_cost(params: Mapping[str, str]) -> dict[str, int | None]:
    """A child run's model_params and macs (logged as params), None where absent or not
    a whole number (a store's text is not trusted)."""
    out: dict[str, int | None] = {}
    for key, param in (("model_params", "model_params"), ("macs", "macs_per_example")):
        text = params.get(param)
        out[key] = int(text) if isinstance(text, str) and text.isascii() and text.isdigit() \
            and len(text) < 30 else None
    return out


def _typed(knob: str, text: str | None) -> Any:
    """A knob's value from its MLflow param text."""
    if text is None:
        return None
    kind = KNOBS[knob].kind
    if kind is LayerValues:  # a number, or per-layer constants in their canonical text
        return layer_values.from_text(text)
    if kind is bool:
        return text == "True"
    if kind is int:
        return int(float(text))
    if kind is float:
        return float(text)
    return text
