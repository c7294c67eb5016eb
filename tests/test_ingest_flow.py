"""The ingest flow: same outputs as the core ingest, cached when nothing changed, incremental when a file is added."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from bearing_core.synthetic import generate_demo


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
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
