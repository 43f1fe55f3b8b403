"""How big a default task must be: split-half rank stability against task size, per family.

Not a test (it takes minutes): the measurement behind the default task sizes of the analyzers
(``N_PROMPTS``, ``N_NEEDLES``, ``N_ITEMS``... in their modules). Two steps::

    OMP_NUM_THREADS=1 python -m workbench.analyzers.stability_sizes sizes --family sinks
    OMP_NUM_THREADS=1 python -m workbench.analyzers.stability_sizes defaults --family sinks

``sizes`` runs a family once on a large task without its causal check and, from the per-item
values it keeps (``attrs["per_item"]``, no extra forward), computes the split-half Spearman and
top-k overlap (:func:`~workbench.analyzers.uncertainty.split_half_stability`) of the tasks made
of its first ``n`` items, for growing ``n``, with the scan time such a task would take. The
default is the smallest ``n`` whose split-half Spearman is >= 0.9, or the largest the CPU budget
allows. ``defaults`` runs a family at its defaults and at ``quick=True``, causal check included,
and prints the stability, the causal verdict and p-value, and the runtime.

For retrieval the items are the tests the model passes and the task grows by needles (each
needle brings ``len(lengths) x len(depths)`` tests); for contextual they are the prompts
answered correctly. Both map a task prefix to its scored items through ``attrs``.

Measured on SmolLM2-135M-Instruct, CPU, ``OMP_NUM_THREADS=1``, one run at a time on a shared
2-core machine (load average 2-3.5). Split-half Spearman by task size (``sizes``)::

    sinks            8: .982  12: .989  16: .986  24: .991  32: .993  64: .995
    previous_token   8: .993  12: .995  16: .997  32: .998  64: .999
    duplicate_token  8: .932  12: .973  16: .966  32: .978  64: .989
    induction        8: .868  12: .945  16: .938  32: .961  64: .983
    attribution      6: .543  16: .578  32: .587  64: .668  96: .713   (0.37 s a prompt)
    contextual      10: .828  16: .900  24: .939  32: .916  48: .970   (items; 1.8 s an item)
    retrieval        2: .842   4: .863   6: .883   8: .905  12: .925  16: .922  (needles)
    safety           8: .914  16: .947  24: .963  40: .971   (~11 s a prompt: 270 heads)

At the defaults chosen from it and at ``quick=True`` (``defaults``; seconds include the causal
check; p: empirical p-value of the top-5 against the random draws)::

    family           default task        rho   top10  causal   p      s  | quick: rho    p     s
    sinks            16 prompts          .986  .90    8 x 39   1.0   47  |  .986  1.0     6
    previous_token   12 prompts          .995  .99    8 x 39   .53   45  |  .993  .50     4
    duplicate_token  12 prompts          .973  .92    8 x 39   .025  37  |  .932  .25     4
    induction        12 prompts          .945  .995   8 x 39   .025  38  |  .868  .25     4
    attribution      96 IOI prompts      .713  .885  32 x 39   .025  67  |  .331  .25     3
    contextual       24 items (19)       .939  .90    8 x 20   .76  247  |  .828  .75    89
    retrieval        48 tests (35)       .905  .925   6 x 20   .33  234  |  .732  .25    42
    safety           8 prompts           .914  .745  16 x 20   .52  204  |  .914  .50   145
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from workbench.analyzers.uncertainty import split_half_stability

#: Per family: the large task (parameters of ``analyze``), the size parameter and the sizes.
FAMILIES: dict[str, dict[str, Any]] = {
    "sinks": {"big": {"n_prompts": 64}, "sizes": [8, 12, 16, 24, 32, 48, 64]},
    "previous_token": {"big": {"n_prompts": 64}, "sizes": [8, 12, 16, 24, 32, 48, 64]},
    "duplicate_token": {"big": {"n_prompts": 64}, "sizes": [8, 12, 16, 24, 32, 48, 64]},
    "induction": {"big": {"n_prompts": 64}, "sizes": [8, 12, 16, 24, 32, 48, 64]},
    "attribution": {"big": {"n_prompts": 96}, "sizes": [6, 12, 16, 24, 32, 48, 64, 96]},
    "contextual": {"big": {"n_items": 48, "focus": False}, "sizes": [10, 16, 24, 32, 40, 48]},
    "retrieval": {"big": {"n_needles": 16}, "sizes": [2, 4, 6, 8, 10, 12, 16]},
    "safety": {"big": {"n_prompts": 40, "sahara": False}, "sizes": [8, 16, 24, 32, 40]},
}
TARGET = 0.9  # split-half Spearman a default task should reach


def scored_rows(name: str, attrs: dict[str, Any], size: int) -> int:
    """How many rows of ``attrs["per_item"]`` the task of the first ``size`` units holds."""
    if name == "retrieval":
        per_needle = len(attrs["params"]["lengths"]) * len(attrs["params"]["depths"])
        return sum(t["passed"] for t in attrs["tests"][: size * per_needle])
    if name == "contextual":
        return sum(a["correct"] for a in attrs["answers"][:size])
    return size


def measure_sizes(lm: Any, name: str) -> list[dict[str, Any]]:
    """Split-half stability and estimated scan time of every size of ``name`` (one scan)."""
    from workbench.analyzers import analyze

    spec = FAMILIES[name]
    start = time.perf_counter()
    df = analyze(name, lm, progress=False, causal=False, **spec["big"])
    seconds = time.perf_counter() - start
    items = np.asarray(df.attrs["per_item"], dtype=np.float64)
    units = spec["sizes"][-1]
    rows = []
    for size in spec["sizes"]:
        n = scored_rows(name, df.attrs, size)
        stab = split_half_stability(items[:n]) if n else {"spearman": float("nan")}
        rows.append(
            {
                "family": name,
                "size": size,
                "items": n,
                "spearman": stab["spearman"],
                "spearman_min": stab.get("spearman_min"),
                "top_k_overlap": stab.get("top_k_overlap"),
                "scan_s_estimate": round(seconds * size / units, 1),
            }
        )
    return rows


def measure_defaults(lm: Any, name: str) -> list[dict[str, Any]]:
    """The family at its defaults and at ``quick=True``: stability, causal verdict, runtime."""
    from workbench.analyzers import analyze

    out = []
    for quick in (False, True):
        start = time.perf_counter()
        df = analyze(name, lm, progress=False, quick=quick)
        seconds = time.perf_counter() - start
        stab = df.attrs.get("stability") or {}
        causal = df.attrs.get("causal") or {}
        extra = df.attrs.get("causal_logprob")  # contextual's companion check
        out.append(
            {
                "family": name,
                "quick": quick,
                "items": (df.attrs.get("uncertainty") or {}).get("items"),
                "spearman": stab.get("spearman"),
                "top_k_overlap": stab.get("top_k_overlap"),
                "causal_items": causal.get("items"),
                "draws": causal.get("draws"),
                "p_value": causal.get("p_value"),
                "verdict": causal.get("verdict", causal.get("skipped")),
                "seconds": round(seconds, 1),
                "scan_seconds": df.attrs.get("seconds"),
                **({"logprob_p_value": extra.get("p_value")} if extra else {}),
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: ``sizes`` or ``defaults``, ``--family`` (repeatable; default all)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=("sizes", "defaults"))
    parser.add_argument("--family", action="append", choices=sorted(FAMILIES))
    parser.add_argument("--out", help="append the rows as JSON lines to this file")
    args = parser.parse_args(argv)

    import workbench

    lm = workbench.load_model()
    for name in args.family or list(FAMILIES):
        rows = measure_sizes(lm, name) if args.step == "sizes" else measure_defaults(lm, name)
        for row in rows:
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
