"""The ingest flow: same outputs as the core ingest, cached when nothing changed, incremental when a file is added."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bearing_core.synthetic import generate_demo

pytestmark = pytest.mark.integration  # runs the ingest flow on a Prefect test server


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory):
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path_factory.mktemp("results")}),
        prefect_test_harness(server_startup_timeout=120),
    ):
        yield


def test_ingest_flow_cached_then_incremental(harness, tmp_path: Path) -> None:
    from flows.ingest import ingest_flow

    raw = tmp_path / "raw"
    generate_demo(raw, sites=2, files_per_site=4, seed=3, workers=1)
    out = tmp_path / "processed"

    first = ingest_flow(raw_dir=str(raw), out_dir=str(out), workers=1)
    assert (first["ingested"], first["quarantined"]) == (8, 0)
    features = pd.read_parquet(out / "features.parquet")
    assert len(features) == 8 and set(features["site"]) == {"site_1", "site_2"}

    # Nothing changed: the task is served from cache with the same content hash.
    second = ingest_flow(raw_dir=str(raw), out_dir=str(out), workers=1)
    assert second == first

    # One new raw file: the task runs again and the core ingest parses exactly that file.
    site = raw / "site_1"
    newest = sorted(site.iterdir())[-1]
    shutil.copyfile(newest, site / "2010.01.01.00.00.00")
    third = ingest_flow(raw_dir=str(raw), out_dir=str(out), workers=1)
    assert (third["ingested"], third["unchanged"]) == (1, 8)
    assert third["features_sha256"] != first["features_sha256"]
    assert len(pd.read_parquet(out / "features.parquet")) == 9

    # Outputs deleted: the cached result is not trusted, the dataset is rebuilt.
    shutil.rmtree(out)
    fourth = ingest_flow(raw_dir=str(raw), out_dir=str(out), workers=1)
    assert fourth["ingested"] == 9
    assert (out / "features.parquet").is_file()


def test_cached_result_is_not_served_for_outputs_of_other_raw_content(harness, tmp_path: Path) -> None:
    """Raw files changed, then restored with their old mtimes: the raw fingerprint matches the first run's again,
    but the outputs on disk are those of the changed content, so the first run's cached result must not be served.
    """
    from flows.ingest import ingest_flow

    raw = tmp_path / "raw"
    generate_demo(raw, sites=1, files_per_site=3, seed=4, workers=1)
    out = tmp_path / "processed"
    first = ingest_flow(raw_dir=str(raw), out_dir=str(out), workers=1)

    target = min((raw / "site_1").iterdir())
    original, stat = target.read_bytes(), target.stat()
    target.write_bytes(original.replace(b"\t", b"\t\t", 1))  # line 1 now has an empty column: quarantined
    changed = ingest_flow(raw_dir=str(raw), out_dir=str(out), workers=1)
    assert (changed["ingested"], changed["quarantined"]) == (0, 1)

    target.write_bytes(original)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # e.g. restored from a backup
    restored = ingest_flow(raw_dir=str(raw), out_dir=str(out), workers=1)
    assert restored["ingested"] == 1 and restored["quarantined"] == 0
    assert restored["features_sha256"] == first["features_sha256"]
    assert len(pd.read_parquet(out / "features.parquet")) == 3
    # ... and from then on the first run's record (which describes these outputs again) is served
    assert ingest_flow(raw_dir=str(raw), out_dir=str(out), workers=1) == first
