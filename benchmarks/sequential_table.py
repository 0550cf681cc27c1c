"""Operating characteristics of the group-sequential paired verdict (study/report/sequential.py)
at the bundled digits study's scale, against the fixed-n design of the same power.

Prints a Markdown table: for each spending function (and, for contrast, naive looks with
the fixed-n intervals) and each true effect, the average pairs used and the rate of each
final decision over simulated studies, each rate with its Monte Carlo standard error, and
the pairs a fixed-n design needs to settle the comparison as often (P(settled) = 1 -
P(inconclusive)).

    python benchmarks/sequential_table.py [--studies 10000] [--seed 0] [--out FILE]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from study.report.sequential import Design, fixed_n_same_power, simulate  # noqa: E402

SD = 0.012  # sd of the paired differences in accuracy (1.2 pp, like the digits study)
MARGIN = 0.005  # equivalence margin (0.5 pp)
ALPHA = 0.05
MAX_PAIRS = 60
LOOKS = 5


def _pct(sim, decision: str) -> str:
    return f"{100 * sim.rates[decision]:.1f} ± {100 * sim.mcse(decision):.1f}"


def rows(n_studies: int, seed: int) -> list[str]:
    out = []
    for label, spending, naive in (("O'Brien-Fleming", "obrien_fleming", False),
                                   ("Pocock", "pocock", False),
                                   ("naive (fixed-n CI each look)", "obrien_fleming", True)):
        design = Design(ALPHA, MARGIN, MAX_PAIRS, LOOKS, spending=spending)
        for k, effect in enumerate((0.0, MARGIN / 2, MARGIN, 2 * MARGIN)):
            rng = np.random.default_rng([seed, k])
            sim = simulate(design, effect, SD, n_studies, rng, naive=naive)
            # a rate of 1.0 only says "above 1 - 1/n_studies": aim at that, not at 1
            target = min(sim.settled, 1 - 1 / n_studies)
            fixed = fixed_n_same_power(design, effect, SD, target)
            out.append(f"| {label} | {100 * effect:+.2f} | {sim.mean_pairs:.1f} ± "
                       f"{sim.pairs_sd:.1f} | {_pct(sim, 'higher')} | {_pct(sim, 'lower')} | "
                       f"{_pct(sim, 'equivalent')} | {_pct(sim, 'inconclusive')} | "
                       f"{100 * sim.settled:.1f} | {fixed if fixed is not None else '>1200'} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=10_000, help="simulated studies per row")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    a = ap.parse_args()
    t0 = time.perf_counter()
    plan = Design(ALPHA, MARGIN, MAX_PAIRS, LOOKS).planned_pairs()
    lines = [
        f"Sequential paired verdict: sd of differences {100 * SD:g} pp, margin ±"
        f"{100 * MARGIN:g} pp, alpha {ALPHA}, looks at {', '.join(map(str, plan))} pairs; "
        f"{a.studies} simulated studies per row (seed {a.seed}); rates in % ± MCSE; "
        "pairs as mean ± sd over studies.",
        "",
        "Accuracy: higher is better, so 'better' is the decision 'higher'. The fixed-n "
        "design is the one-look verdict of study.report.stats with the same alpha and margin; "
        "where every simulated study settled, it is sized for P(settled) = 1 - 1/studies.",
        "",
        "| design | true effect (pp) | pairs used | better | worse | equivalent | "
        "inconclusive | P(settled) % | fixed-n pairs, same P(settled) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows(a.studies, a.seed),
        "",
        f"Made by: `python {' '.join(shlex.quote(x) for x in sys.argv)}` "
        f"({time.perf_counter() - t0:.1f} s).",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
