"""Which device measured which point, for a run spread over several GPUs (`sabench run --devices`).

Each (point, round) ran in one point process pinned to one GPU, and the round's entry names it
(`rounds[].device`). The section appears only when the rounds name more than one device: then a
point's rounds, and different points, may come from different GPUs, and a difference between
points can include a difference between GPUs. A round's cell (one batch size and seq_len, every
variant) always ran on one GPU, so the paired per-round ratios compare like with like.
The run's topology stays one GPU per point: the GPUs measured different points, not one together.
"""
from __future__ import annotations

from typing import List

from sabench.records import RunRecord
from sabench.report.tables import md_table


def devices_used(results: RunRecord) -> list:
    """The devices the rounds name, in first-seen order."""
    seen: dict = {}
    for r in results.records:
        for x in r.rounds or ():
            if x.device is not None:
                seen.setdefault(x.device, None)
    return list(seen)


def section(results: RunRecord) -> List[str]:
    """'## Which device measured which point': point -> device per round; [] unless several devices."""
    used = devices_used(results)
    if len(used) < 2:
        return []
    n_rounds = max((x.round for r in results.records for x in r.rounds or ()), default=1)
    rows, done = [], set()
    for r in results.records:  # both phases of a (point, round) ran in one process: one row a point
        key = (r.variant, r.batch_size, r.seq_len)
        if key in done or not r.rounds:
            continue
        done.add(key)
        by_round = {x.round: x.device or "-" for x in r.rounds}
        rows.append((r.batch_size, r.seq_len, [f"`{r.variant}`", str(r.batch_size), str(r.seq_len)]
                     + [by_round.get(k, "") for k in range(1, n_rounds + 1)]))
    rows = [row for _, _, row in sorted(rows, key=lambda x: (str(x[0]), x[1]))]  # a cell's variants together
    facts = {str(d.get("gpu")): d for d in results.env.get("devices") or [] if isinstance(d, dict)}
    named = [f"GPU {g}: {facts[g].get('name') or 'name unknown'}"
             + (f" ({facts[g]['pci_bus_id']})" if facts[g].get("pci_bus_id") else "")
             for g in used if g in facts and (facts[g].get("name") or facts[g].get("pci_bus_id"))]
    return ["## Which device measured which point", "",
            f"This run spread its points over {len(used)} devices (`--devices`), one point process per device "
            "at a time; a round's batch size and seq_len ran on one device for every variant, so the per-round ratios "
            "pair like with like. Differences between points measured on different devices can include the "
            "devices' own differences, and whether neighbouring GPUs disturb each other has not been measured."
            + (" " + "; ".join(named) + "." if named else ""), "",
            md_table(["variant", "batch", "seq_len"] + [f"round {k}" for k in range(1, n_rounds + 1)], rows), ""]
