"""`dataset:`: a bundled name, `name:PATH` or a mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from study.spec.context import Context, shorthand
from study.spec.knobs import DATASETS, FASHION_MNIST_DIR, LIMITS
from study.spec.model import DatasetSpec

_DATASET_KEYS = ("name", "path", "val_fraction", "test_fraction", "split_seed", "limit",
                 "samples", "image_size", "channels", "classes")


def _dataset_path(c: Context, name: str, path: Any, check_paths: bool) -> tuple[str, str | None]:
    """`dataset.path`: required by file datasets and, with check_paths, usable; the
    fashion-mnist name becomes idx with Debian's folder as default path."""
    if path is not None:
        path = c.string("dataset.path", path)
    if name == "fashion-mnist":
        name, path = "idx", path or FASHION_MNIST_DIR
        if check_paths and not Path(path).is_dir():
            c.fail("dataset.path", path, "a folder with Fashion-MNIST's IDX files (on Debian "
                   "or Ubuntu: `apt-get install dataset-fashion-mnist` puts them in "
                   f"{FASHION_MNIST_DIR}; or download them from "
                   "github.com/zalandoresearch/fashion-mnist)", "no such folder")
    if name in ("npz", "idx", "cifar10") and path is None:
        hint = {
            "npz": "a .npz file with arrays x_train, y_train, x_test, y_test: "
                   "`dataset: npz:PATH`",
            "idx": "a folder of MNIST-format IDX files: `dataset: idx:DIR`",
            "cifar10": "the folder `cifar-10-batches-py` (python version from "
                       "www.cs.toronto.edu/~kriz/cifar.html, unpacked): `dataset: cifar10:DIR`",
        }[name]
        c.fail("dataset.path", None, hint, "missing path")
    if check_paths and path is not None and name != "synthetic":
        from study.data import formats as data_formats  # light: numpy only

        problem = data_formats.check_path(name, path)
        if problem:
            c.fail("dataset.path", path, problem, "unusable dataset path")
    return name, path


def parse_dataset(c: Context, value: Any, check_paths: bool = True) -> DatasetSpec:
    """`dataset:` a name, `name:PATH` or a mapping of _DATASET_KEYS."""
    if isinstance(value, str):
        value = shorthand(value)
    d = c.mapping("dataset", value, _DATASET_KEYS)
    name = c.string("dataset.name", d.get("name", "digits"), DATASETS)
    name, path = _dataset_path(c, name, d.get("path"), check_paths)
    limit = d.get("limit")
    spec = DatasetSpec(
        name=name,
        path=path,
        val_fraction=c.number("dataset.val_fraction", d.get("val_fraction", 0.1), 0.0, 0.9),
        test_fraction=c.number("dataset.test_fraction", d.get("test_fraction", 0.2),
                               0.0, 0.9, low_open=True),
        split_seed=c.integer("dataset.split_seed", d.get("split_seed", 0)),
        limit=None if limit is None else c.integer("dataset.limit", limit),
        samples=c.integer("dataset.samples", d.get("samples", 600)),
        image_size=c.integer("dataset.image_size", d.get("image_size", 8)),
        channels=c.integer("dataset.channels", d.get("channels", 1)),
        classes=c.integer("dataset.classes", d.get("classes", 10)),
    )
    if spec.name == "synthetic":
        values = spec.samples * spec.channels * spec.image_size ** 2
        _, most = LIMITS["synthetic_values"]
        if values > most:
            c.fail("dataset.samples", spec.samples, f"samples x channels x image_size^2 at "
                   f"most {most:.0e} (synthetic data is generated in memory; here "
                   f"{values:.2g})", "too much synthetic data")
    return spec


