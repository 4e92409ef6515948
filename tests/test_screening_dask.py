"""The same screening on dask.distributed (a LocalCluster of two worker processes)."""

from __future__ import annotations

import pytest

from service.protocol import default_protocol
from service.screening.outdir import OutputFolder
from service.screening.runner import screen_ndjson
from service.settings import get_settings
from tests.screening_population import (
    AS_OF,
    bundle_mode,
    population,
    results_by_patient,
    worklist,
    write_ndjson,
)

distributed = pytest.importorskip("distributed")


def _run(src, out, **kwargs):
    protocol = default_protocol()
    folder = OutputFolder(out, protocol, AS_OF, resume=False)
    return screen_ndjson(src, folder, protocol, get_settings().protocol_path, **kwargs)


def test_dask_cluster_gives_the_local_results(tmp_path):
    bundles = population(synthetic=4)
    src = write_ndjson(bundles, tmp_path / "export")
    local = _run(src, tmp_path / "local", workers=1)
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        on_dask = _run(src, tmp_path / "dask", cluster=cluster.scheduler_address)
    assert on_dask.failed == 0 and not on_dask.interrupted
    assert on_dask.counts == local.counts
    assert worklist(tmp_path / "dask" / "worklist.csv") == worklist(
        tmp_path / "local" / "worklist.csv"
    )
    found = results_by_patient(tmp_path / "dask" / "results.ndjson")
    assert found == results_by_patient(tmp_path / "local" / "results.ndjson")
    for pid, bundle in bundles.items():
        assert found[pid] == bundle_mode(bundle), pid
