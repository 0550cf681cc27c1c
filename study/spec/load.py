"""Reading a spec: YAML text or file, `--set` overrides, then each section parsed in turn."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from study.errors import SpecError
from study.spec import yaml_reader as spec_yaml
from study.spec.context import Context, shorthand, shown
from study.spec.dataset import parse_dataset
from study.spec.distributions import parse_space
from study.spec.families import FAMILIES
from study.spec.grid import check_grid
from study.spec.knob_rules import check_knob_rules
from study.spec.knobs import NAME_RE
from study.spec.model import StudySpec
from study.spec.objectives import parse_objectives
from study.spec.sections import (
    check_fuse,
    check_run_count,
    check_sequential,
    parse_compare,
    parse_execution,
    parse_fixed,
    parse_resources,
    parse_search,
    parse_verdict,
)
from study.spec.size_check import Candidates, check_footprint
from study.spec.storage import STORAGE_ENV, parse_storage, resolve_storage

_TOP_KEYS = (
    "name", "question", "dataset", "model", "train", "space", "compare", "repeats",
    "search", "metric", "verdict", "resources", "execution", "storage",
)


def load_spec(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None,
              ) -> StudySpec:
    """Load and validate a study spec from a YAML file.

    Args:
        path: the YAML file.
        overrides: dotted keys to replace before validation, e.g. ``{"search.trials": 2}``.

    Raises:
        SpecError: naming the file, field, value and what is allowed.
    """
    source = os.fsdecode(path)
    try:
        raw = spec_yaml.parse(spec_yaml.read_bounded(path))
    except FileNotFoundError:
        raise SpecError(f"{source}: no such spec file. Bundled specs: "
                        + ", ".join(sorted(str(s) for s in _bundled_specs())) + ".") from None
    except spec_yaml.UnsafeYaml as e:
        raise SpecError(f"{source}: {e}.") from None
    return parse_spec(raw, source=source, overrides=overrides)


def load_yaml_text(text: str | bytes, source: str) -> Any:
    """A YAML document read with the spec file's bounds (no aliases, 1 MiB, nesting), for
    spec text that comes from elsewhere (a store); SpecError naming `source` if refused."""
    try:
        return spec_yaml.parse(text)
    except spec_yaml.UnsafeYaml as e:
        raise SpecError(f"{source}: {e}.") from None


def _bundled_specs() -> list[Path]:
    here = Path(__file__).resolve().parents[2] / "search_spaces"  # beside the package
    return sorted(here.glob("*.yaml")) if here.is_dir() else []


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any], source: str,
                    ) -> dict[str, Any]:
    """Return a copy of `raw` with dotted-key overrides applied (values as YAML scalars)."""
    out: dict[str, Any] = _deepcopy(raw)
    for dotted, value in overrides.items():
        if isinstance(value, str) and value != "":
            # as in a spec file (1e-3 is a number); text that is not YAML stays a string
            with contextlib.suppress(spec_yaml.UnsafeYaml):
                value = spec_yaml.parse(value)
        keys = [k for k in str(dotted).split(".")]
        if not all(keys):
            raise SpecError(f"{source}: override `{dotted}`: empty key in the dotted path.")
        node = out
        for i, k in enumerate(keys[:-1]):
            nxt = node.get(k)
            if nxt is None or isinstance(nxt, str) and k in ("model", "dataset"):
                # `model: cnn` / `dataset: npz:PATH` shorthand grows into a mapping
                nxt = shorthand(nxt) if isinstance(nxt, str) else {}
                node[k] = nxt
            elif not isinstance(nxt, dict):
                raise SpecError(
                    f"{source}: override `{dotted}`: `{'.'.join(keys[:i + 1])}` is "
                    f"{shown(nxt)}, not a mapping, so it has no key `{keys[i + 1]}`.")
            node = nxt
        node[keys[-1]] = value
    return out


def _deepcopy(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _deepcopy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_deepcopy(v) for v in x]
    return x


def parse_spec(raw: Any, *, source: str = "<dict>",
               overrides: Mapping[str, Any] | None = None,
               check_paths: bool = True) -> StudySpec:
    """Validate a raw (YAML-loaded) spec. See :func:`load_spec`.

    Each section is parsed by its own function, in this order (which decides the error a
    spec with several mistakes gets). `check_paths=False` skips checking that dataset
    files exist (rebuilding a report on a machine without the data)."""
    c = Context(source)
    top = _parse_top(c, raw, overrides)
    name, question = _parse_name(c, top)
    dataset = parse_dataset(c, top.get("dataset", "digits"), check_paths)
    knobs = parse_fixed(c, top.get("model", "cnn"), top.get("train"))
    compare_knob, levels = parse_compare(c, top.get("compare"), knobs)
    space = parse_space(c, top.get("space"), knobs.fixed_from, compare_knob, knobs.values.get,
                        knobs.allowed)
    # the fixed knobs: every one not searched or compared
    fixed = {k: v for k, v in knobs.values.items() if k not in space and k != compare_knob}
    repeats = c.integer("repeats", top.get("repeats", 1))
    search = parse_search(c, top.get("search"), searched=bool(space))
    search = check_grid(c, top.get("search"), search, space)
    check_run_count(c, search.trials, len(levels) or 1, repeats)
    cand = Candidates(fixed, knobs.fixed_from, space, compare_knob, levels)
    check_knob_rules(c, cand, search.scheduler, knobs.fuse)
    if FAMILIES[knobs.model].size_checked:
        check_footprint(c, cand, dataset, check_paths)
    objectives = parse_objectives(c, top.get("metric", "val_accuracy"), search.scheduler)
    metric, mode = objectives[0]
    verdict = parse_verdict(c, top.get("verdict"), compare_knob, space)
    cpu, gpu = parse_resources(c, top.get("resources"))
    execution = parse_execution(c, top.get("execution"))
    check_fuse(c, knobs.fuse, fixed)
    st = c.mapping("storage", top.get("storage"), list(STORAGE_ENV))
    storage = parse_storage(c, st, resolve_storage(st))  # the environment is read here
    # the sections' fields are StudySpec's fields of the same names
    spec = StudySpec(
        name=name, question=question, dataset=dataset, model=knobs.model, fixed=fixed,
        space=space, compare_knob=compare_knob, compare_levels=levels, repeats=repeats,
        **vars(search), metric=metric, mode=mode, **vars(verdict), cpu=cpu, gpu=gpu,
        **vars(execution), fuse=knobs.fuse, **vars(storage), source=source,
        objectives=objectives, raw=_deepcopy(top),
    )
    check_sequential(c, spec.sequential, spec.scheduler, spec.most_runs)
    return spec


def _parse_top(c: Context, raw: Any, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The top-level mapping, overrides applied, its keys checked and `name` and
    `question` present."""
    if not isinstance(raw, Mapping):
        c.fail("(top level)", raw, "a mapping with keys " + ", ".join(_TOP_KEYS),
               "expected a mapping")
    if overrides:
        raw = apply_overrides(raw, overrides, c.source)
    top = c.mapping("", raw, _TOP_KEYS)
    for required in ("name", "question"):
        if required not in top:
            c.fail(required, None, "a non-empty string", "missing required field")
    return top


def _parse_name(c: Context, top: Mapping[str, Any]) -> tuple[str, str]:
    """`name` (NAME_PATTERN) and `question` (free text)."""
    name = c.string("name", top["name"])
    if not NAME_RE.fullmatch(name):
        c.fail("name", name, "letters, digits, '.', '_' and '-', starting with a letter or "
               "digit, at most 100 characters")
    return name, c.text("question", top["question"])


