"""Build ``prewarm/data/servegen-spiky-14d.csv.gz`` (the demo's trace) from the ServeGen trace.

Input: the canonical CSV of ServeGen's per-client request rates (alibaba/ServeGen,
``data/language/{m-large,m-small}``, Apache-2.0) at 10-minute resolution over 14 days, as in the
development set (``servegen-large-small-10min.csv``). Output: the same rows for 16 clients, chosen
by a fixed rule so that the demo shows both what prewarm is for and what it must leave alone:

- 10 *spiking* clients: active on at least 12 of the 14 days, with a daily spike (the day's
  busiest 10 minutes at least 8x the day's median + 1) on at least 12 days, ranked by how
  consistently the spike falls at the same time of day (mean resultant length of the peak's
  phase);
- 6 *steady* clients: the busiest of those active every day with no daily spike on any day.

Usage: ``python hack/make-demo-trace.py SERVEGEN_CSV OUT_CSV_GZ``
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

DAY_STEPS = 144


def _daily(series: np.ndarray) -> np.ndarray:
    days = series.size // DAY_STEPS
    return series[: days * DAY_STEPS].reshape(days, DAY_STEPS)


def main(source: str, out: str) -> None:
    rows = pd.read_csv(source)
    table = rows.pivot_table(index="timestamp", columns="model", values="requests", aggfunc="sum")
    index = pd.date_range(table.index.min(), table.index.max(), freq="10min").strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    table = table.reindex(index).fillna(0.0)
    spiking: list[tuple[float, str]] = []
    steady: list[tuple[float, str]] = []
    for client in table.columns:
        days = _daily(table[client].to_numpy())
        active = int((days.sum(axis=1) > 0).sum())
        ratio = days.max(axis=1) / (np.median(days, axis=1) + 1.0)
        spike_days = int((ratio >= 8.0).sum())
        phase = days.argmax(axis=1) / DAY_STEPS * 2 * np.pi
        consistency = float(np.hypot(np.cos(phase).mean(), np.sin(phase).mean()))
        if active >= 12 and spike_days >= 12:
            spiking.append((consistency, client))
        elif active == len(days) and spike_days == 0:
            steady.append((float(days.sum()), client))
    chosen = [c for _, c in sorted(spiking, reverse=True)[:10]]
    chosen += [c for _, c in sorted(steady, reverse=True)[:6]]
    subset = rows[rows["model"].isin(chosen)].sort_values(["timestamp", "model"])
    subset.to_csv(out, index=False, compression="gzip")
    print(f"{len(chosen)} clients, {len(subset)} rows -> {out}: {', '.join(chosen)}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
