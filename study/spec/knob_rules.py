"""Rules across knobs, checked over every value each knob can take in a study: training
by steps or by epochs, per-layer lists against the layer counts, shortcuts need stride 1,
dropout does not fuse."""

from __future__ import annotations

from study.spec.context import Context
from study.spec.layer_values import exact_count
from study.spec.size_check import Candidates


def check_knob_rules(c: Context, cand: Candidates, scheduler: str, fuse: str) -> None:
    _check_steps(c, cand, scheduler)
    _check_layer_lists(c, cand, "bias_init", "depth", 0, "conv layer")
    _check_layer_lists(c, cand, "fc_bias_init", "fc_layers", 1,
                       "fully connected layer (the hidden ones, then the classifier)")
    if any(cand.values("residual")) and max(cand.values("stride")) > 1:
        c.fail(cand.where("stride"), max(cand.values("stride")), "stride 1 when `residual` "
               f"can be true ({cand.where('residual')}): an identity shortcut needs the map "
               "size unchanged", "conflict")
    dropout = [k for k in ("dropout", "conv_dropout") if max(cand.values(k)) > 0]
    if fuse == "on" and dropout:
        c.fail("train.fuse", "on", f"auto or off with {dropout[0]} > 0 "
               f"({cand.where(dropout[0])}): each run draws its dropout masks from its own "
               "generator, which fused training cannot", "conflict")


def _check_steps(c: Context, cand: Candidates, scheduler: str) -> None:
    """`steps` (then stop) and `epochs` are two ways to say how long: one of them."""
    if cand.where("steps") == "default":
        return
    if cand.where("epochs") != "default":
        c.fail(cand.where("steps"), cand.values("steps")[0], "either `epochs` "
               f"({cand.where('epochs')}) or `steps`, not both: steps trains that many "
               "optimizer steps, then stops", "set twice")
    if scheduler == "asha":
        c.fail("search.scheduler", scheduler, "fifo when training by `steps` (ASHA stops "
               "runs at epoch milestones)", "conflict")


def _check_layer_lists(c: Context, cand: Candidates, knob: str, count_knob: str, extra: int,
                       layer: str) -> None:
    """A list without '...' has one constant per layer, for every layer count possible."""
    counts = sorted({int(n) + extra for n in cand.values(count_knob)})
    for value in cand.values(knob):
        if isinstance(value, str) and exact_count(value) is not None and \
                counts != [exact_count(value)]:
            c.fail(cand.where(knob), value, f"one constant per {layer}: "
                   f"{' or '.join(map(str, counts))} here ({count_knob} at "
                   f"{cand.where(count_knob)}); or a rule whose last entry repeats, "
                   "e.g. '0, 1...'", "wrong number of layers")
