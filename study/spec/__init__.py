"""Study specs: YAML -> validated, frozen objects.

Everything a user can get wrong is checked here, before Ray starts, and reported as a
:class:`SpecError` whose message names the file, the field path, the bad value and what is
allowed. The package imports no torch, Ray, Optuna or MLflow. Its modules, in the order a
spec is read: ``yaml_reader`` (bounded YAML), ``load`` (file, overrides, sections),
``context`` (typed field readers), ``knobs`` (every knob and limit), one module per section
(``sections``, ``distributions``, ``grid``, ``objectives``, ``dataset``, ``storage``),
``size_check`` with ``footprint`` (the worst-case model size), ``families`` (the model
registry), ``layer_values`` (per-layer constants) and ``model`` (the frozen result).
"""

from study.errors import SpecError
from study.spec.families import FAMILIES, Family, register_family, unregister_family
from study.spec.knobs import (
    DATASETS,
    FASHION_MNIST_DIR,
    FUSE_MODES,
    KNOBS,
    LIMITS,
    METRICS,
    NAME_PATTERN,
    SAMPLERS,
    Knob,
)
from study.spec.load import apply_overrides, load_spec, load_yaml_text, parse_spec
from study.spec.model import DatasetSpec, Dist, SequentialSpec, StudySpec
from study.spec.storage import STORAGE_ENV, resolve_storage, resolve_tracking_uri

__all__ = [
    "DATASETS", "FAMILIES", "FASHION_MNIST_DIR", "FUSE_MODES", "KNOBS", "LIMITS", "METRICS",
    "NAME_PATTERN", "SAMPLERS", "STORAGE_ENV", "DatasetSpec", "Dist", "Family", "Knob",
    "SequentialSpec", "SpecError", "StudySpec", "apply_overrides", "load_spec",
    "load_yaml_text", "parse_spec", "register_family", "resolve_storage",
    "resolve_tracking_uri", "unregister_family",
]
