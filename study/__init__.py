"""study: turn CNN architecture folklore into measured answers.

Ray Tune orchestrates, Optuna searches, MLflow records every run, PyTorch trains. The
public API is small; importing it loads no data and starts, imports or opens nothing heavy
(no Ray, torch, Optuna or MLflow until a study runs).

Example:
    >>> import study
    >>> spec = study.load_spec("search_spaces/conv_bias_bn.yaml",
    ...                        overrides={"search.trials": 2})
    >>> spec.total_runs  # 2 configurations x 2 levels (bias on/off) x 4 seeds
    16
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from study.spec import SpecError, StudySpec, load_spec

if TYPE_CHECKING:
    from study.records import ConfigRecord, Progress, ReportError, RunRecord, StudyResult

__all__ = ["ConfigRecord", "Progress", "ReportError", "RunRecord", "SpecError", "StudyResult",
           "StudySpec", "load_spec", "resume", "run"]
__version__ = "0.1.0"


def run(spec: Any, *, overrides: dict[str, Any] | None = None, **kwargs: Any) -> StudyResult:
    """Run a study (a spec path or a :class:`StudySpec`); see :func:`study.tune.runner.run`."""
    from study.tune.runner import run as _run

    return _run(spec, overrides=overrides, **kwargs)


def resume(target: Any, **kwargs: Any) -> StudyResult:
    """Continue an interrupted execution; see :func:`study.tune.runner.resume`."""
    from study.tune.runner import resume as _resume

    return _resume(target, **kwargs)


def __getattr__(name: str) -> Any:
    if name in ("ConfigRecord", "Progress", "ReportError", "RunRecord", "StudyResult"):
        from study import records as results

        return getattr(results, name)
    raise AttributeError(f"module 'study' has no attribute {name!r}")
