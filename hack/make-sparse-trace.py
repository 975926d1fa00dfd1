"""Build ``prewarm/data/azure-functions-2019-sparse.csv.gz`` (the sparse, intermittent case).

Input: the canonical CSV of the Azure Functions 2019 sample (vhive-serverless/invitro's sample of
Azure/AzurePublicDataset, CC-BY 4.0): 500 functions, invocations per minute over 8 hours, as in the
development set (``azure-functions-2019-sample-8h.csv``). Output: the same rows for the *rare*
functions, chosen by a fixed rule that describes a fleet of adapters called a few times an hour:

- invoked in at least 4 and at most 80 distinct minutes of the 8 hours (0.5 to 10 active minutes
  an hour: idle most of the time, yet with enough requests for a policy to learn from), and
- at most 10 invocations per active minute on average (a few requests each time, not a batch job
  that fires rarely but heavily).

Usage: ``python hack/make-sparse-trace.py AZURE_SAMPLE_CSV OUT_CSV_GZ``
"""

from __future__ import annotations

import sys

import pandas as pd

HOURS = 8.0
MIN_ACTIVE_PER_HOUR = 0.5
MAX_ACTIVE_PER_HOUR = 10.0
MAX_PER_ACTIVE_MINUTE = 10.0


def main(source: str, out: str) -> None:
    rows = pd.read_csv(source)
    per_model = rows.groupby("model")["requests"].agg(["sum", "count"])
    active = per_model["count"]
    chosen = per_model[
        (active >= MIN_ACTIVE_PER_HOUR * HOURS)
        & (active <= MAX_ACTIVE_PER_HOUR * HOURS)
        & (per_model["sum"] <= MAX_PER_ACTIVE_MINUTE * active)
    ].index
    subset = rows[rows["model"].isin(chosen)].sort_values(["timestamp", "model"])
    subset.to_csv(out, index=False, compression="gzip")
    print(
        f"{len(chosen)} of {len(per_model)} functions, {len(subset)} rows, "
        f"{int(subset['requests'].sum())} requests -> {out}"
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
