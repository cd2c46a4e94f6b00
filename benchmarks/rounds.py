"""Interleaved rounds: how the benchmarks compare configurations on a shared machine.

Every round runs each configuration once on the same fixed work, in an order rotated by one
place per round, so a slow spell of the machine hits all of them alike and none always runs
first. A ratio of two configurations is computed within each round, and the report gives the
median of those per-round ratios and their spread (pyperf's design; style.md point 18).

A ratio is `consistent` when both hold:
- its per-round values do not straddle 1 (min < 1 < max): the rounds agree which of the two
  configurations is faster. Shares (a part over its whole) have no such reference and skip it;
- their interquartile range is at most MAX_IQR (10%) of their median.
An inconsistent ratio is not evidence of a difference: the machine's drift within the run was
as large as the effect. Read one whose rounds straddle 1 as "no difference measurable here".
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

MAX_IQR = 0.10  # interquartile range over median above which a ratio's rounds disagree

Probe = Callable[[], dict[str, float]]  # monotonic counters, e.g. CPU seconds per process


def rotated(names: list[str], round_index: int) -> list[str]:
    """The order of round `round_index`: `names` rotated left by that many places."""
    k = round_index % len(names)
    return names[k:] + names[:k]


def interleave(
    configs: dict[str, Callable[[], int]],
    rounds: int,
    probes: dict[str, Probe] | None = None,
    log: Callable[[str], None] = print,
    warm_up: bool = True,
) -> dict:
    """Run every configuration once per round, in rotated order, after one untimed call of
    each (the first requests fill caches, arenas and connections).

    Args:
        configs: name -> a call that does the configuration's fixed work once and returns how
            many images it scored. Set-up (sessions, connections) belongs outside the call.
        probes: name -> counters read just before and after each call; their differences are
            kept per configuration and round.

    Returns:
        {"order": [[name, ...] per round], "images": {name: [n per round]},
        "images_per_s": {name: [rate per round]}, "deltas": {probe: {name: [{counter: delta}]}}}
    """
    probes = probes or {}
    names = list(configs)
    out: dict = {
        "order": [],
        "images": {n: [] for n in names},
        "images_per_s": {n: [] for n in names},
        "deltas": {p: {n: [] for n in names} for p in probes},
    }
    if warm_up:
        for name in names:
            configs[name]()
    for r in range(rounds):
        order = rotated(names, r)
        out["order"].append(order)
        for name in order:
            before = {p: probe() for p, probe in probes.items()}
            start = time.perf_counter()
            images = configs[name]()
            seconds = time.perf_counter() - start
            for p, probe in probes.items():
                after = probe()
                delta = {k: v - before[p].get(k, 0.0) for k, v in after.items()}
                out["deltas"][p][name].append(delta)
            out["images"][name].append(images)
            out["images_per_s"][name].append(images / seconds)
        rates = ", ".join(f"{n} {out['images_per_s'][n][-1]:.1f}" for n in names)
        log(f"round {r + 1}/{rounds} ({' > '.join(order)}): {rates} images/s")
    return out


def spread(values: list[float], reference: float | None = 1.0) -> dict:
    """Median, min-max, quartiles and the consistency verdict (module docstring) of per-round
    values; `reference` None for a share."""
    if not values:
        raise ValueError("no rounds to summarise")
    if len(values) > 1:
        q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = median = q3 = values[0]
    iqr = (q3 - q1) / abs(median) if median else float("inf")
    straddles = reference is not None and min(values) < reference < max(values)
    return {
        "median": median,
        "min": min(values),
        "max": max(values),
        "q1": q1,
        "q3": q3,
        "iqr_over_median": iqr,
        "straddles_1": straddles,
        "consistent": not straddles and iqr <= MAX_IQR,
        "rounds": list(values),
    }


def ratio(rates: dict[str, list[float]], numerator: str, denominator: str) -> dict:
    """Per-round `numerator / denominator` with its spread, and each side's median rate."""
    per_round = [a / b for a, b in zip(rates[numerator], rates[denominator], strict=True) if b > 0]
    return {
        "of": f"{numerator} / {denominator}",
        **spread(per_round),
        numerator: statistics.median(rates[numerator]),
        denominator: statistics.median(rates[denominator]),
    }


def ratio_rows(ratios: dict[str, dict], targets: dict[str, str] | None = None) -> list[str]:
    """Markdown table of ratios: median, min-max, IQR/median, consistent, target."""
    targets = targets or {}
    rows = [
        "| ratio | median | min - max | IQR / median | consistent | target |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in ratios.items():
        flag = "yes" if r["consistent"] else "**no**" + (" (straddles 1)" * r["straddles_1"])
        rows.append(
            f"| {name} ({r['of']}) | {r['median']:.3f} | {r['min']:.3f} - {r['max']:.3f} "
            f"| {r['iqr_over_median']:.1%} | {flag} | {targets.get(name, '')} |"
        )
    return rows
