"""bearing_core.fleet: the site's training file, the fleet fingerprint (publishing a model trained across sites)
and champion/challenger on the sites' reported holdout MSE."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers.feature_datasets import write_feature_dataset
from helpers.models import train_model

from bearing_core.fleet import (
    SiteReport,
    decide_champion,
    fleet_fingerprint,
    report_key,
    resume_action,
    stage_training_file,
)
from bearing_core.inputs import InputConfig
from bearing_core.partition.build import partition_dataset
from bearing_core.partition.writer import scheme_dir
from bearing_core.registry import (
    current_champion,
    is_complete,
    publish_model,
    registry_dir,
)


def _report(site: str, pid: int, holdout_rows: int = 10, **mse: float) -> SiteReport:
    return SiteReport(
        site=site,
        partition_id=pid,
        created=datetime.now(UTC),
        validation_passed=True,
        dataset_sha256=f"{pid:064d}",
        train_rows=40,
        holdout_rows=holdout_rows,
        holdout_mse={k.replace("_", "-"): v for k, v in mse.items()},
    )


def test_a_site_trains_as_client_k_of_the_fleet_from_its_one_client_partition(tmp_path: Path) -> None:
    dataset = write_feature_dataset(tmp_path / "site", rows_per_site=20, sites=("site_1",))
    manifest = partition_dataset(dataset, "natural", 1, 0, InputConfig(train_fraction=1.0))
    out = tmp_path / "federation"
    out.mkdir()
    (out / "client_0.parquet").write_bytes(b"stale")
    staged = stage_training_file(scheme_dir(dataset, "natural"), 2, out)
    assert staged == out / "client_2.parquet" and sorted(p.name for p in out.iterdir()) == ["client_2.parquet"]
    table = pq.read_table(staged)
    assert table.num_rows == manifest.clients[0].train_rows + manifest.clients[0].holdout_rows
    two = partition_dataset(
        write_feature_dataset(tmp_path / "two", rows_per_site=20), "natural", 2, 0, InputConfig(train_fraction=1.0)
    )
    assert two.num_clients == 2
    with pytest.raises(ValueError, match="one client, this partitioning has 2"):
        stage_training_file(scheme_dir(tmp_path / "two", "natural"), 0, out)


def test_champion_challenger_on_the_sites_holdout_mse() -> None:
    first = decide_champion([], "v2", None, quorum=2)
    assert first["promoted"] is True and "first model" in first["reason"]
    # only sites that evaluated both versions count; fewer than the quorum defers the decision
    reports = [_report("a", 0, v1=1.0, v2=0.5), _report("b", 1, v1=1.0), _report("c", 2, v2=0.1)]
    deferred = decide_champion(reports, "v2", "v1", quorum=2)
    assert deferred["promoted"] is None and "1 site(s)" in deferred["reason"]
    # pooled by holdout rows: a = 10 rows (1.0 vs 0.5), b = 30 rows (1.0 vs 1.4) -> 1.0 vs (5 + 42) / 40 = 1.175
    reports = [_report("a", 0, 10, v1=1.0, v2=0.5), _report("b", 1, 30, v1=1.0, v2=1.4)]
    worse = decide_champion(reports, "v2", "v1", quorum=2)
    assert worse["promoted"] is False and worse["challenger_mse"] == pytest.approx(1.175)
    assert worse["champion_mse"] == pytest.approx(1.0) and worse["eval_rows"] == 40
    assert decide_champion(reports, "v2", "v1", quorum=2, tolerance=0.2)["promoted"] is True
    reports = [_report("a", 0, 10, v1=1.0, v2=0.5), _report("b", 1, 10, v1=1.0, v2=1.4)]
    assert decide_champion(reports, "v2", "v1", quorum=2)["promoted"] is True  # 0.95 <= 1.0


def test_a_model_trained_across_sites_is_published_with_the_fleet_fingerprint(tmp_path: Path) -> None:
    dataset = write_feature_dataset(tmp_path / "data", rows_per_site=40)
    partition_dataset(dataset, "natural", 2, 0, InputConfig(train_fraction=1.0))
    trained = train_model(tmp_path / "train" / "v1", scheme_dir(dataset, "natural") / "manifest.json", rounds=1)
    record = tmp_path / "run.json"
    record.write_text(json.dumps({"run_id": 1}))
    reports = [_report("site-b", 1, 12), _report("site-a", 0, 8)]
    fingerprint = fleet_fingerprint("fleet", reports, record)
    assert fingerprint.sites == ["site-a", "site-b"] and fingerprint.holdout_rows == 20
    assert fingerprint.train_rows == 80 and fingerprint.partition_scheme == "sites"
    info = publish_model(trained, fingerprint, models_root=tmp_path / "models", version="v1")
    version_dir = registry_dir(tmp_path / "models", "fleet") / "v1"
    assert info.version == "v1" and is_complete(version_dir)
    assert json.loads((version_dir / "fingerprint.json").read_text())["dataset_sha256"] == fingerprint.dataset_sha256
    assert current_champion(tmp_path / "models", "fleet") is None  # publishing never promotes
    assert report_key("Site A") == "fleet-site-site-a"
    with pytest.raises(ValueError, match="no site took part"):
        fleet_fingerprint("fleet", [], record)
    assert pd.read_parquet(version_dir / "metrics.parquet").shape[0] > 0


def test_a_coordinator_rerun_reuses_or_reattaches_to_the_nights_flower_run_and_never_continues_a_failed_one() -> None:
    assert resume_action(None, False) == "submit"
    assert resume_action("finished:completed", True) == "reuse"
    assert resume_action("finished:completed", False) == "submit"  # its model was lost: train again
    for running in ("pending", "starting", "running"):
        assert resume_action(running, False) == "attach"
    for ended in ("finished:failed", "finished:stopped", "unknown"):
        assert resume_action(ended, True) == "submit"
