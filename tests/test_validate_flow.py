"""The validate flow: artifacts, failing the run on errors, caching on the dataset's content."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# the synthetic processed-dataset writer of the validation tests (tests/ is on sys.path under pytest)
from helpers.processed_datasets import write_dataset

from bearing_core.validation import ValidationConfig, ValidationFailed

pytestmark = pytest.mark.integration  # runs the validate flow on a Prefect test server


@pytest.fixture(scope="module")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A throw-away Prefect API and result store (cached results must not leak between test sessions)."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path_factory.mktemp("results")}),
    ):
        yield


def _artifacts(key: str) -> list[object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def test_flow_publishes_artifacts_and_caches_on_content(prefect_harness: None, tmp_path: Path) -> None:
    from flows.validate import artifact_key, validate_flow

    ds = tmp_path / "Demo Set"
    ds.mkdir()
    write_dataset(ds, {"site_1": 5, "site_2": 5})
    cfg = ValidationConfig(build_docs=False)
    report = validate_flow(str(ds), cfg)
    assert report.success and report.n_valid == 10
    key = artifact_key(ds)
    assert key == "validation-demo-set"
    markdown = _artifacts(key)
    assert len(markdown) == 1 and markdown[0].type == "markdown"
    assert markdown[0].data.startswith("# Validation PASSED") and "`samples.not_flat`" in markdown[0].data
    table = _artifacts(f"{key}-checks")
    assert len(table) == 1 and table[0].type == "table" and '"samples.not_clipped"' in str(table[0].data)

    # unchanged dataset and settings: served from cache (the report on disk is not rewritten)
    stamp = (ds / "validation" / "report.json").stat().st_mtime_ns
    assert validate_flow(str(ds), cfg).success
    assert (ds / "validation" / "report.json").stat().st_mtime_ns == stamp
    # new thresholds: re-validated
    stricter = ValidationConfig(build_docs=False, shutdown_rms_ratio=0.999)  # below-median snapshots now warn
    assert validate_flow(str(ds), stricter).outcome("timeline.shutdown").status == "WARN"
    assert (ds / "validation" / "report.json").stat().st_mtime_ns != stamp


def test_flow_fails_on_error_after_publishing(prefect_harness: None, tmp_path: Path) -> None:
    from flows.validate import artifact_key, validate_flow

    ds = tmp_path / "dup"
    ds.mkdir()
    write_dataset(ds, {"site_1": 5})
    features = pd.read_parquet(ds / "features.parquet")
    features.loc[3, "timestamp"] = features.loc[2, "timestamp"]
    pq.write_table(pa.Table.from_pandas(features, preserve_index=False), ds / "features.parquet")

    state = validate_flow(str(ds), ValidationConfig(build_docs=False), return_state=True)
    assert state.is_failed()
    with pytest.raises(ValidationFailed, match="timeline.increasing") as info:
        state.result()
    assert {o.check for o in info.value.report.errors} == {"timeline.increasing", "features.site_timestamp.unique"}
    markdown = _artifacts(artifact_key(ds))
    assert len(markdown) == 1 and markdown[0].data.startswith("# Validation FAILED")
