"""What one `cnn` run needs, computed from the knobs alone: parameters and activations.

The spec stage uses this to refuse a model that cannot fit before any run starts, so it
imports no torch; the formulas follow study/train/models.py (a test checks them against the real
model). Input shapes of file datasets are read from the files' headers, not their data.
"""

from __future__ import annotations

import gzip
import math
import zipfile
import zlib
from pathlib import Path

__all__ = ["BYTES_PER_VALUE", "MAX_ACTIVATION_BYTES", "MAX_PARAMS", "activation_values",
           "conv_size", "file_input_shape", "final_map", "param_count", "pool_positions",
           "same_padding"]

# 5e7 parameters: 200 MB of fp32 weights, 0.8 GB per run with gradients and Adam's two
# moments; 250x the largest bundled model, on the order of a ResNet-50 (2.6e7).
MAX_PARAMS = 50_000_000
# 8 GiB of activations kept for the backward pass per run: a GPU share or a CPU worker's
# memory; the bundled scale-up (CIFAR-10, depth 56, width 128, batch 64) needs about 2 GiB.
MAX_ACTIVATION_BYTES = 8 * 2**30
BYTES_PER_VALUE = 4  # fp32 (autocast to bf16/fp16 keeps some at 2: this is the bound)


def conv_size(size: int, stride: int) -> int:
    """Side of a conv's output with SAME padding: ceil(size / stride)."""
    return -(-size // stride)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of one side, as TensorFlow's SAME: the extra pixel after."""
    total = max((conv_size(size, stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pool_positions(depth: int, size: int, stride: int = 1, pool: str = "max") -> list[int]:
    """Indices of the conv layers after which a 2x2 pool halves the feature map.

    As many halvings as keep the map at least 2x2 (at most depth - 1), spread evenly over the
    depth, never after the last layer: every depth >= 1 is valid on every input size. With
    strided convs a pool goes only where the map is still at least 2x2; `pool: none`: no pools.
    """
    if pool == "none":
        return []
    n_down = max(0, min(depth - 1, int(math.floor(math.log2(max(size, 1)))) - 1))
    spots = [round((s + 1) * depth / (n_down + 1)) - 1 for s in range(n_down)]
    if stride == 1:
        return spots
    out, side = [], size
    for i in range(depth):
        side = conv_size(side, stride)
        if i in spots and side >= 2:
            out.append(i)
            side //= 2
    return out


def final_map(depth: int, height: int, width_px: int, stride: int = 1,
              pool: str = "max") -> tuple[int, int]:
    """(height, width) of the last conv layer's feature map."""
    pools = set(pool_positions(depth, min(height, width_px), stride, pool))
    h, w = height, width_px
    for i in range(depth):
        h, w = conv_size(h, stride), conv_size(w, stride)
        if i in pools:
            h, w = h // 2, w // 2
    return h, w


def param_count(*, in_channels: int, classes: int, depth: int, width: int, bias: bool,
                norm: str, residual: bool, zero_gain: bool, fc_layers: int, fc_width: int,
                fc_bias: bool, kernel: int = 3, head_in: int | None = None) -> int:
    """Trainable parameters of the `cnn` model these knobs build; `head_in`: the values the
    head reads (width, or with `flatten` width x the last map's area, see final_map)."""
    k2 = kernel * kernel
    extra = (width if bias else 0) + (2 * width if norm == "batch" else 0)
    per_unit = k2 * width * width + extra
    first = k2 * in_channels * width + extra
    gains = (depth - 1) if residual and zero_gain else 0
    fcs, fan_in = 0, width if head_in is None else head_in
    for _ in range(fc_layers):
        fcs += fan_in * fc_width + (fc_width if fc_bias else 0)
        fan_in = fc_width
    fcs += fan_in * classes + (classes if fc_bias else 0)
    return first + (depth - 1) * per_unit + gains + fcs


def activation_values(*, in_channels: int, height: int, width_px: int, depth: int,
                      width: int, norm: str, residual: bool, zero_gain: bool,
                      fc_layers: int, fc_width: int, classes: int, kernel: int = 3,
                      stride: int = 1, pool: str = "max", flatten: bool = False,
                      conv_dropout: float = 0.0, dropout: float = 0.0) -> int:
    """Values one example keeps for the backward pass (an estimate from above).

    Per conv unit: with a stride its padded input, the conv output, the norm output, the
    ReLU output, a dropout mask and, with a shortcut, the scaled branch and the sum; per pool
    its output; the input and the head (and the classifier's dropout mask)."""
    h, w = height, width_px
    kept = 2 + (norm == "batch") + (conv_dropout > 0)
    shortcut = (1 + zero_gain) if residual and stride == 1 else 0  # units after the 1st
    values, cin = in_channels * h * w, in_channels
    pools = set(pool_positions(depth, min(height, width_px), stride, pool))
    for i in range(depth):
        if stride > 1:  # the padded copy of the input the conv keeps
            values += cin * (h + sum(same_padding(h, kernel, stride))) * \
                (w + sum(same_padding(w, kernel, stride)))
            h, w = conv_size(h, stride), conv_size(w, stride)
        values += (kept + (shortcut if i > 0 else 0)) * width * h * w
        if i in pools:
            h, w = h // 2, w // 2
            values += width * h * w
        cin = width
    head_in = width * h * w if flatten else width
    classifier_in = fc_width if fc_layers else head_in
    return values + head_in + 2 * fc_layers * fc_width + classes + \
        (classifier_in if dropout > 0 else 0)


def file_input_shape(name: str, path: str) -> tuple[int, int, int] | None:
    """(channels, height, width) of a file dataset's training images, from the header of
    its npz member or IDX file; None when the header cannot be read (the data stage then
    reports the file)."""
    try:
        if name == "npz":
            return _npz_shape(Path(path))
        if name == "idx":
            return _idx_shape(Path(path))
    except (OSError, ValueError, KeyError, EOFError, NotImplementedError, zipfile.BadZipFile,
            zlib.error):  # unreadable, corrupt, or a compression zipfile lacks
        return None
    return None


def _npz_shape(path: Path) -> tuple[int, int, int] | None:
    import numpy as np

    with zipfile.ZipFile(path) as z, z.open("x_train.npy") as fh:
        major, _ = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if major == 1 else \
            np.lib.format.read_array_header_2_0
        shape = read(fh)[0]
    if len(shape) == 3:
        return 1, int(shape[1]), int(shape[2])
    if len(shape) == 4 and shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        return int(shape[3]), int(shape[1]), int(shape[2])  # (N, H, W, C), as the reader
    if len(shape) == 4:
        return int(shape[1]), int(shape[2]), int(shape[3])
    return None


def _idx_shape(folder: Path) -> tuple[int, int, int] | None:
    stem = folder / "train-images-idx3-ubyte"
    opener = (open, stem) if stem.is_file() else (gzip.open, stem.with_name(stem.name + ".gz"))
    with opener[0](opener[1], "rb") as fh:
        head = fh.read(16)
    if len(head) < 16 or head[3] != 3:
        return None
    return 1, int.from_bytes(head[8:12], "big"), int.from_bytes(head[12:16], "big")
