"""The run's rejected images, found by the first pass that decodes them.

There is no separate inspection of the whole collection (a decode pass of its own: at a
million images, an epoch's worth of reads and decodes before any training). Each pass decodes
its rows as it needs them anyway; a row that fails there is reported to the run's *ledger* (a
small Ray actor the driver owns) with its reason and the pass that found it, and dropped. The
ledger counts rejected rows against `data.max_rejected_fraction` of all images as they come: a
report that takes the count over the limit is answered with the run's error, which the pass
raises (a `DataError`, one line from the CLI). So the limit stops a run as soon as the rows
over it are decoded: before pretraining trains when its data is cached (decoded before the
Train run starts), within its first epoch when streamed; every image has been decoded once the
score stage has run, before the fine-tuning search.

The driver writes the ledger to `RunLayout.rejected` after every stage and when a run stops
(`save`). A row found by a stage that did not finish is not kept on the next run: that stage
decodes it again (a fixed file is then read), so a run stopped at the limit can be fixed and
run again.
"""

from __future__ import annotations

import hashlib

import pandas as pd

from dtl_ray.data.samples import DOMAIN, ERROR, PATH, SAMPLE_ID, SPLIT
from dtl_ray.errors import DataError
from dtl_ray.storage import parquet

__all__ = ["FOUND_IN", "COLUMNS", "LISTING", "Ledger", "open_ledger", "report", "table",
           "save", "start", "count"]

FOUND_IN = "found_in"
"""The pass that found the row: a stage's name, or `listing` (a file name that is not UTF-8)."""
COLUMNS = [SAMPLE_ID, DOMAIN, SPLIT, PATH, ERROR, FOUND_IN]
LISTING = "listing"


def limit_error(n: int, total: int, fraction: float, examples: list[str], listed_in: str) -> str:
    return (f"{n} of {total} images ({n / max(total, 1):.1%}) cannot be decoded, over "
            f"data.max_rejected_fraction={fraction}; e.g. {', '.join(examples[:3])} (all "
            f"listed in {listed_in})")


class Ledger:
    """The rejected rows of each run this driver runs (keyed by the run's root), with the
    limit. Made a Ray actor by `open_ledger`; its methods are plain Python for tests."""

    def __init__(self):
        self.runs: dict[str, dict] = {}

    def reset(self, root: str, rows: list[dict], total: int, fraction: float,
              listed_in: str) -> int:
        self.runs[root] = {"rows": {r[SAMPLE_ID]: r for r in rows}, "total": int(total),
                           "fraction": float(fraction), "listed_in": listed_in, "new": []}
        return len(rows)

    def known(self, root: str) -> bool:
        return root in self.runs

    def add(self, root: str, rows: list[dict]) -> str | None:
        """Records `rows` (dicts of COLUMNS; ones already listed are kept as they were).
        Returns the run's error when the rejected rows are now over the limit, else None."""
        run = self.runs[root]
        for r in rows:
            if r[SAMPLE_ID] not in run["rows"]:
                run["rows"][r[SAMPLE_ID]] = r
                run["new"].append(r[PATH])
        n, total = len(run["rows"]), run["total"]
        if n > run["fraction"] * total:
            examples = run["new"] or [r[PATH] for r in run["rows"].values()]
            return limit_error(n, total, run["fraction"], examples, run["listed_in"])
        return None

    def rows(self, root: str) -> list[dict]:
        return list(self.runs.get(root, {}).get("rows", {}).values())


def _actor_name() -> str:
    """One ledger per driver (its job): it dies with the driver."""
    import ray

    job = ray.get_runtime_context().get_job_id()
    return f"dtl-ray-rejects-{hashlib.sha1(job.encode()).hexdigest()[:12]}"


def _handle():
    import ray

    return ray.remote(Ledger).options(name=_actor_name(), namespace="dtl-ray",
                                      get_if_exists=True, num_cpus=0).remote()


def _kept_rows(layout, stages_done) -> list[dict]:
    """The rows of the run's table that stay listed: found in the listing or by a finished
    stage."""
    from dtl_ray import storage

    if not storage.exists(layout.rejected):
        return []
    old = parquet.read_df(layout.rejected)
    if FOUND_IN not in old:  # a table from before passes were named: the listing's rows
        old[FOUND_IN] = LISTING
    keep = old[old[FOUND_IN].isin([LISTING, *stages_done])]
    return keep.reindex(columns=COLUMNS).astype(object).to_dict("records")


def open_ledger(layout, fraction: float, fresh: bool = False):
    """The driver's ledger, holding the run of `layout`: on its first use in this driver (or
    `fresh`, at the start of a run) loaded from the run's table, keeping the rows that the
    listing or a finished stage found. Returns the actor handle."""
    import ray


    ledger = _handle()
    if fresh or not ray.get(ledger.known.remote(layout.root)):
        total = len(parquet.read_df(layout.manifest, [SAMPLE_ID]))
        rows = _kept_rows(layout, layout.finished())
        names = sum(r[FOUND_IN] == LISTING for r in rows)  # inputs too, not in the manifest
        ray.get(ledger.reset.remote(layout.root, rows, total + names, fraction,
                                    layout.rejected))
    return ledger


def report(ledger, root: str, batch: dict, failed, stage: str) -> None:
    """Reports a batch's failed rows (mask `failed`) to the ledger; raises `DataError` when
    they take the run over its limit."""
    import ray

    rows = [{SAMPLE_ID: str(batch[SAMPLE_ID][i]), DOMAIN: str(batch[DOMAIN][i]),
             SPLIT: str(batch[SPLIT][i]), PATH: str(batch[PATH][i]),
             ERROR: str(batch[ERROR][i]), FOUND_IN: stage}
            for i in failed.nonzero()[0]]
    error = ray.get(ledger.add.remote(root, rows))
    if error:
        raise DataError(error)


def table(ledger, root: str) -> pd.DataFrame:
    import ray

    rows = ray.get(ledger.rows.remote(root))
    return pd.DataFrame(rows, columns=COLUMNS)


def save(layout) -> int | None:
    """Writes the ledger's rows of the run to `RunLayout.rejected`; returns how many (None
    when this driver holds no ledger for the run)."""
    import ray


    try:
        ledger = ray.get_actor(_actor_name(), namespace="dtl-ray")
    except ValueError:
        return None
    if not ray.get(ledger.known.remote(layout.root)):
        return None
    rows = table(ledger, layout.root)
    parquet.write_df(rows, layout.rejected)
    return len(rows)


def start(layout, names: pd.DataFrame) -> None:
    """A freshly listed run's table: the files the listing could not take (names that are not
    UTF-8), found in the `listing`."""

    parquet.write_df(names.assign(**{FOUND_IN: LISTING}).reindex(columns=COLUMNS)
                          .astype(str), layout.rejected)


def count(layout) -> int:
    """Rows in the run's rejected table (0 when there is none)."""
    from dtl_ray import storage

    if not storage.exists(layout.rejected):
        return 0
    return len(parquet.read_df(layout.rejected, [SAMPLE_ID]))
