"""The `study` command line: parsing and printing only; the work lives in the modules."""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

from study.redact import redact_uri
from study.spec import SpecError, load_spec
from study.terminal import printable, say

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def _overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`--set key=value` pairs -> {key: value}; the values stay text, read as YAML scalars
    (1e-3 a number, true a boolean) by study.spec.apply_overrides."""
    out: dict[str, Any] = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {p!r}: expected dotted.key=value, e.g. "
                            "--set search.trials=2")
        out[key.strip()] = value
    return out


class _Parser(argparse.ArgumentParser):
    """argparse, with the arguments it echoes in its errors made printable."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {printable(message)}\n")


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="study", description="Distributed hyperparameter studies of CNN folklore "
        "(Ray Tune + Optuna + MLflow + PyTorch).")
    sub = ap.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="check a spec and show what it would run")
    v.add_argument("spec", nargs="+", help="YAML spec file(s)")
    v.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a field, e.g. search.trials=2")
    r = sub.add_parser("run", help="run a study to the end")
    r.add_argument("spec", help="YAML spec file, e.g. search_spaces/conv_bias_bn.yaml")
    r.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a field (repeatable), e.g. "
                   "--set search.trials=2 --set train.epochs=1")
    r.add_argument("--quiet", action="store_true", help="no progress lines")
    rs = sub.add_parser("resume", help="continue an interrupted study execution")
    rs.add_argument("target", help="the spec file, the study name (its latest execution) or "
                    "an execution id")
    rs.add_argument("--tracking-uri", help="MLflow store, when TARGET is not a spec file "
                    "(default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db); for a server "
                    "with basic auth: http://user:password@host:port or "
                    "$MLFLOW_TRACKING_USERNAME / $MLFLOW_TRACKING_PASSWORD")
    rs.add_argument("--optuna-storage", help="Optuna storage URL with its password, when "
                    "the stored copy has it masked (default: the one the study used, "
                    "$STUDY_OPTUNA_STORAGE, or the spec file's)")
    rs.add_argument("--quiet", action="store_true", help="no progress lines")
    rp = sub.add_parser("report", help="rebuild a study's report from MLflow and Optuna "
                        "(no Ray)")
    rp.add_argument("name", help="a study name (its latest execution) or an execution id")
    rp.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or "
                    "sqlite:///mlflow.db)")
    rp.add_argument("--optuna-storage", help="Optuna storage (default: the one the study "
                    "used; if its password is masked in the stores: $STUDY_OPTUNA_STORAGE)")
    rp.add_argument("--out", help="folder for report.md/html and plots (default: "
                    "study_results/<execution>/report)")
    rp.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    from study.tune import interrupts

    interrupts.stop_now()  # SIGTERM, like Ctrl-C, interrupts from the start (exit 130)
    args = _parser().parse_args(argv)
    try:
        if args.command == "validate":
            for path in args.spec:
                spec = load_spec(path, overrides=_overrides(args.overrides))
                from study.data.load import check_dataset

                check_dataset(spec.dataset, spec.source)
                _out(spec.summary())
                _out(f"OK: {path}")
            return EXIT_OK
        if args.command == "run":
            return _run(args)
        if args.command == "report":
            return _report(args)
        if args.command == "resume":
            return _run(args)
    except SpecError as e:
        _err(f"error: {e}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _err(f"{args.command} INTERRUPTED")
        return EXIT_INTERRUPTED
    return EXIT_FAILED  # pragma: no cover - argparse guarantees a command


def _run(args: argparse.Namespace) -> int:
    """`study run` and `study resume`: the summary on stdout, the outcome in the exit code
    and, when it is not a clean finish, one line on stderr per problem saying what to do."""
    from study.records import ReportError
    from study.tracking.writer import TrackingError
    from study.tune.ray_adapter import RayChanged
    from study.tune.runner import resume, run

    echo = None if args.quiet else _err
    report_failed = ""
    try:
        if args.command == "resume":
            result = resume(args.target, tracking_uri=args.tracking_uri,
                            optuna_storage=args.optuna_storage, echo=echo)
        else:
            spec = load_spec(args.spec, overrides=_overrides(args.overrides))
            result = run(spec, echo=echo)
    except TrackingError as e:
        _err(f"error: {e}")
        return EXIT_BAD_INPUT
    except RayChanged as e:  # this Ray lacks what a safe study needs: no run started
        _err(f"error: {e}")
        return EXIT_FAILED
    except ReportError as e:
        result, report_failed = e.result, str(e)
    except KeyboardInterrupt:  # before the study's execution existed
        _err(_interrupted_early(args))
        return EXIT_INTERRUPTED
    _out(summary(result))
    if result.verdict:
        _out(f"\n{result.verdict}")
    if result.report_dir:
        _out(f"report: {result.report_dir}/report.html (and report.md; also in the MLflow "
             "parent run's artifacts)")
    return _outcome(result, report_failed)


def _outcome(result: Any, report_failed: str) -> int:
    """Print what went wrong, one line each; the exit code of the worst."""
    from study.records import ENDED, RunStatus, StudyStatus

    lines, code = [], EXIT_OK
    if result.status == StudyStatus.INTERRUPTED:
        done = sum(1 for r in result.runs if r.status in ENDED)
        lines.append(f"study INTERRUPTED: {done} run(s) ended and are kept; continue with "
                     f"`study resume {result.execution}`")
        code = EXIT_INTERRUPTED
    elif result.status != StudyStatus.FINISHED:
        failed = [r for r in result.runs if r.status == RunStatus.FAILED]
        why = _first_error(failed)
        lines.append(f"study FAILED: every run failed ({len(failed)} of {len(result.runs)})"
                     + (f"; first error: {why}" if why else ""))
        code = EXIT_FAILED
    if report_failed:
        lines.append(f"report FAILED ({report_failed}); every run is stored: rebuild it "
                     f"with `study report {result.execution}`")
        code = code or EXIT_FAILED
    if result.mlflow_dropped_writes:
        lines.append(f"MLflow FAILED to store {result.mlflow_dropped_writes} write(s) (runs: "
                     f"{', '.join(result.mlflow_dropped_runs) or 'unknown'}); counted in the "
                     f"parent run's tag study.mlflow_dropped_writes")
        code = code or EXIT_FAILED
    for line in lines:
        _err(line)
    return code


def _first_error(failed: Sequence[Any]) -> str:
    from study.records import last_line

    return next((last_line(r.error)[:300] for r in failed if r.error), "")


def _interrupted_early(args: argparse.Namespace) -> str:
    if args.command == "resume":
        return (f"study INTERRUPTED while resuming, before any run started; continue with "
                f"`study resume {args.target}`")
    return ("study INTERRUPTED while starting, before any run started: nothing to resume; "
            f"start it again with `study run {args.spec}`")


def _report(args: argparse.Namespace) -> int:
    from study.report.build import rebuild, verdict_table
    from study.tracking.writer import TrackingError

    try:
        report, spec, folder = rebuild(args.name, tracking_uri=args.tracking_uri,
                                       optuna_storage=args.optuna_storage, out_dir=args.out,
                                       log_to_mlflow=not args.no_log)
    except TrackingError as e:
        _err(f"error: {e}")
        return EXIT_BAD_INPUT
    _out(verdict_table(report, spec))
    _out(f"report: {folder / 'report.html'} (and report.md)")
    return EXIT_OK


def _out(text: str) -> None:
    """Text for the user on stdout; control characters from user strings made visible."""
    print(printable(text))


_err = say  # a line for the user on stderr, control characters made visible


def summary(result: Any) -> str:
    """A short table of configurations, best first, and where to look next."""
    counts = result.counts()
    lines = [
        "",
        f"study {result.name}: {result.status} in {result.wall_seconds:.0f} s; runs: "
        + (", ".join(f"{v} {k}" for k, v in counts.items() if v) or "none ended"),
    ]
    scored = [c for c in result.configs if c.value is not None]
    reverse = result.mode == "max"
    scored.sort(key=lambda c: c.value, reverse=reverse)
    if scored:
        lines.append(f"  {'config':>6}  {'mean ' + result.metric:>20}  runs  params")
        for c in scored[:10]:
            params = ", ".join(f"{k}={v}" for k, v in c.params.items()) or "(fixed)"
            lines.append(f"  {c.index:>6}  {c.value:>20.4f}  {c.usable_runs:>2}/{c.runs:<2} "
                         f"{params}")
    unscored = [c for c in result.configs if c.value is None]
    if unscored:
        lines.append(f"  {len(unscored)} configuration(s) with no usable run")
    best = result.best
    if best is not None:
        lines.append(f"best: config {best.index} (Optuna trial {best.optuna_trial}), "
                     f"{result.metric} {best.value:.4f}: {best.params}")
    lines += _pareto_lines(result)
    tracking = redact_uri(result.tracking_uri)
    lines.append(f"MLflow: {tracking}, experiment {result.name!r}, parent run "
                 f"{result.parent_run_id} ({result.execution})")
    if result.tracking_uri.startswith("sqlite:"):
        lines.append(f"  view: mlflow ui --backend-store-uri {tracking}")
    if result.runs_url:
        lines.append(f"  runs: {result.runs_url}")
    lines.append(f"Optuna: {redact_uri(result.optuna_storage)}, study {result.optuna_study!r}")
    return "\n".join(lines)


def _pareto_lines(result: Any) -> list[str]:
    """A multi-objective study's Pareto-optimal configurations, one line each."""
    if len(result.objectives) <= 1:
        return []
    names = ", ".join(f"{m} ({d})" for m, d in result.objectives)
    lines = [f"Pareto-optimal configurations on {names}:"]
    for c in result.pareto:
        values = ", ".join(f"{v:.4g}" for v in c.objective_values)
        lines.append(f"  config {c.index}: {values}: {c.params}")
    return lines


def entry() -> NoReturn:
    """The `study` command: `main`, then a quick exit.

    When `main` returns, every result is written and the stores are closed. The exit
    handlers then run as usual (Ray's shutdown among them), and the process leaves without
    Python's interpreter teardown: with torch, Ray, MLflow and SQLAlchemy loaded, that
    teardown is slow and does nothing anyone sees."""
    code = main()
    from study.tune import interrupts

    # The outcome is settled: a signal while Ray stops (under a second) changes nothing.
    interrupts.hold()
    sys.stdout.flush()
    sys.stderr.flush()
    main_thread = threading.main_thread()
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)  # what Python's exit runs first
    if run_exit_handlers is None or any(t.is_alive() and not t.daemon
                                        for t in threading.enumerate() if t is not main_thread):
        sys.exit(code)  # the usual exit (it also waits for a thread that is still working)
    run_exit_handlers()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
