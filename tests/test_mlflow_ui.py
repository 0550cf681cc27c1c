"""The answer where users look: a real browser (Playwright driving Debian's chromium,
headless) on a real `mlflow server` over the SQLite store of a tiny real study. Also the
parent run's answer as MLflow holds it, which needs no browser."""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.report.stats import Effect
from study.tracking.answer import (
    EXPERIMENT_TAGS,
    NOTE_TAG,
    answer_of,
    runs_view_url,
    ui_base_url,
)
from tests.test_deploy import MlflowServer

CHROMIUM = os.environ.get("STUDY_CHROMIUM", "/usr/bin/chromium")


def parent_of(result, uri: str):
    return MlflowClient(uri).get_run(result.parent_run_id)


@pytest.mark.slow
def test_parent_run_carries_the_answer(answered_study):
    result, root, _ = answered_study
    uri = f"sqlite:///{root}/mlflow.db"
    parent = parent_of(result, uri)
    m, t = parent.data.metrics, parent.data.tags
    overall = next(e for e in result.effects if e.group == "all")
    assert t["verdict.bias.false"] == t["study.verdict.bias.False"] == overall.verdict
    shown = {"rel": 1e-3}  # 4 significant digits, as a table shows them
    assert m["verdict.bias.false.diff_pp"] == pytest.approx(overall.mean * 100, **shown)
    assert m["verdict.bias.false.ci_low_pp"] == pytest.approx(overall.ci_low * 100, **shown)
    assert m["verdict.bias.false.ci_high_pp"] == pytest.approx(overall.ci_high * 100, **shown)
    assert m["verdict.bias.false.n_pairs"] == overall.n == 4
    for e in result.effects:  # every `by` group too (norm=batch, norm=none: as searched)
        if e.group != "all":
            key = f"verdict.bias.false.{e.group.replace('=', '.')}"
            assert t[key] == e.verdict and m[f"{key}.n_pairs"] == e.n
    assert m["best.val_accuracy"] == pytest.approx(result.best.value, **shown)
    assert t["study.best_config"] == str(result.best.index)
    assert t[NOTE_TAG].startswith(f"**{overall.sentence()}**")
    exp = MlflowClient(uri).get_experiment(result.experiment_id)
    assert EXPERIMENT_TAGS.items() <= exp.tags.items()
    assert f"mlflow.sharedViewState.{result.execution}" in exp.tags
    assert result.runs_url == runs_view_url(uri, result.experiment_id, result.execution)


@pytest.mark.slow
def test_report_rebuild_writes_the_same_answer(answered_study, tmp_path):
    from study.report.build import rebuild

    result, root, _ = answered_study
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    before = parent_of(result, uri).data
    view_key = f"mlflow.sharedViewState.{result.execution}"
    view_before = client.get_experiment(result.experiment_id).tags[view_key]
    client.delete_tag(result.parent_run_id, "verdict.bias.false")
    note = before.tags[NOTE_TAG]  # back as it was before the verdict was known
    client.set_tag(result.parent_run_id, NOTE_TAG, note[note.index("**Does the conv"):])
    rebuild(result.execution, tracking_uri=uri, optuna_storage=result.optuna_storage,
            out_dir=tmp_path / "rebuilt")
    after = parent_of(result, uri).data
    assert after.tags["verdict.bias.false"] == before.tags["verdict.bias.false"]
    assert after.tags[NOTE_TAG] == before.tags[NOTE_TAG]
    assert after.metrics == before.metrics
    view = client.get_experiment(result.experiment_id).tags[view_key]  # every column kept
    assert view == view_before and "metrics.`best.val_accuracy`" in view


def effect(level, group="all", n=5, mean=0.004, lo=-0.001, hi=0.009) -> Effect:
    return Effect("bias_init", 0.0, level, "test_accuracy", group, n, mean, 0.01, lo, hi,
                  0.1, 0.3, 0.005, "inconclusive", 12, 0, 0, 0.9, 0.904)


@pytest.mark.parametrize("level, group", [
    (0.01, "all"), (-1.5, "norm=batch"), ("a b=c/d", "all"), ("x`y'z", "by=\"q\" r"),
    ("../..", "all"), (float("inf"), "w=é"),
])
def test_answer_names_are_names_mlflow_takes_whatever_the_levels(level, group):
    from mlflow.utils.validation import _validate_metric_name, _validate_tag_name

    ans = answer_of([effect(level, group)], metric="val_accuracy", best=(3, 0.91234567))
    assert len(ans.metrics) == 5 and len(ans.tags) >= 3
    for k in ans.metrics:
        _validate_metric_name(k)  # raises on a name MLflow refuses
        assert len(k) <= 250
    for k in ans.tags:
        _validate_tag_name(k)
    diff = next(v for k, v in ans.metrics.items() if k.endswith(".diff_pp"))
    assert diff == 0.4 and ans.metrics["best.val_accuracy"] == 0.9123


def test_answer_leaves_out_what_has_no_number():
    ans = answer_of([effect(1.0, n=1, lo=math.nan, hi=math.nan), effect(0.1, n=0)],
                    metric="val_loss")
    assert ans.tags == {"verdict.bias_init.1.0": "inconclusive",
                        "study.verdict.bias_init.1.0": "inconclusive",
                        "verdict.bias_init.0.1": "no usable pairs"}
    assert set(ans.metrics) == {"verdict.bias_init.1.0.diff_pp",
                                "verdict.bias_init.1.0.n_pairs"}


@pytest.mark.parametrize(("uri", "base"), [
    ("sqlite:///mlflow.db", "http://127.0.0.1:5000"),
    ("http://alice:s3cret@tracking.example:8080/", "http://tracking.example:8080"),
    ("https://tracking.example/mlflow?token=abc", "https://tracking.example/mlflow"),
])
def test_runs_link_names_the_ui_and_never_a_secret(uri, base):
    url = runs_view_url(uri, "7", "tiny-20261130-120000-abcd")
    assert url == (f"{base}/#/experiments/7/runs?workflowType=machine_learning"
                   "&viewStateShareKey=tiny-20261130-120000-abcd")
    assert ui_base_url(uri) == base and "s3cret" not in url and "abc" not in url.split("#")[0]


def chromium_path() -> str:
    """Debian's chromium ($STUDY_CHROMIUM, else /usr/bin/chromium, else on PATH), or a skip
    saying what is missing: Playwright never downloads a browser of its own here."""
    if Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    found = shutil.which("chromium")
    if found is None:
        pytest.skip(f"no chromium at {CHROMIUM} or on PATH (Debian: apt-get install "
                    "chromium, as .ci/run does; or set STUDY_CHROMIUM)")
    return found


def browser():
    """Playwright's sync API, or a skip saying what is missing (never a failure: the
    browser is an optional test dependency)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; it is in the "
                    "`test` extra)")
    chromium_path()
    return sync_playwright


def wait_for_headers(page, names: list[str], timeout: float = 45.0) -> list[str]:
    """The runs table's column headers once all of `names` show (the saved view applies
    after the experiment is read), or as they are after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        headers = page.locator("[role=columnheader]").all_inner_texts()
        if set(names) <= set(headers) or time.monotonic() > deadline:
            return headers
        page.wait_for_timeout(250)


@pytest.mark.slow
def test_runs_view_shows_the_parent_its_children_and_the_answer(answered_study,
                                                                tmp_path):
    sync_playwright = browser()
    result, root, _ = answered_study
    overall = next(e for e in result.effects if e.group == "all")
    server = MlflowServer(root, backend=f"sqlite:///{root}/mlflow.db")
    server.start()
    shot = tmp_path / "mlflow-runs-view.png"
    try:
        with sync_playwright() as p:
            chromium = p.chromium.launch(executable_path=chromium_path(), headless=True)
            try:
                page = chromium.new_page(viewport={"width": 2400, "height": 1000})
                # the link the summary prints opens the runs table, not the GenAI overview
                page.goto(runs_view_url(server.uri, result.experiment_id, result.execution))
                parent = page.get_by_role("link", name=result.execution, exact=True)
                parent.wait_for(timeout=60_000)
                assert "/runs?" in page.url
                wanted = ["verdict.bias.false", "best.val_accuracy",
                          "verdict.bias.false.diff_pp", "verdict.bias.false.ci_low_pp"]
                headers = wait_for_headers(page, wanted)
                assert set(wanted) <= set(headers), headers
                assert page.get_by_role("gridcell", name=overall.verdict, exact=True).count()
                diff = f"{overall.mean * 100:.4g}"
                assert page.get_by_role("gridcell", name=diff, exact=True).count(), diff
                # expand the parent: its children are listed under it
                page.locator("[role=row]", has=parent).locator(
                    "button[data-component-id*=runnamecellrenderer]").first.click()
                children = sorted(r.run_key for r in result.runs)
                page.get_by_role("link", name=children[-1], exact=True).wait_for(
                    timeout=15_000)
                for key in children:
                    assert page.get_by_role("link", name=key, exact=True).count() == 1, key
                page.screenshot(path=str(shot))
            finally:
                chromium.close()
    finally:
        server.stop()
    print(f"\nscreenshot of the runs view: {shot}")
    assert shot.stat().st_size > 10_000
