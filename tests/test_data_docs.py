"""Offline Data Docs: the validation site loads nothing from the network and stays readable without it.

One small dataset (2 sites, 4 channels, 2,048-sample snapshots) with one implausible feature value, so the site
holds passing and failing suites; validated once with Data Docs for the whole module.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers.processed_datasets import rewrite_features, write_dataset

from bearing_core.validation import ValidationConfig, ValidationReport, validate_dataset

REMOTE_TAG = re.compile(r"<(link|script)\b[^>]*\b(href|src)\s*=\s*[\"']?https?://", re.IGNORECASE)
REMOTE_SRC = re.compile(r"\bsrc\s*=\s*[\"']?https?://", re.IGNORECASE)


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ValidationReport]:
    ds = tmp_path_factory.mktemp("docs")
    write_dataset(ds, {"site_1": 5, "site_2": 5})

    def negative_rms(df):  # features.B2_rms.range fails on one row: the features suite fails, the others pass
        df.loc[df.index[3], "B2_rms"] = -0.1
        return df

    rewrite_features(ds, negative_rms)
    return ds / "validation", validate_dataset(ds, ValidationConfig())


def test_no_page_loads_anything_from_the_network(docs: tuple[Path, ValidationReport]) -> None:
    site, report = docs
    pages = sorted(site.rglob("*.html"))
    assert report.docs_index == site / "index.html" and len(pages) == 9  # index + 4 suites + 4 validation results
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert not REMOTE_TAG.search(html), f"{page}: {REMOTE_TAG.search(html).group(0)}"
        assert not REMOTE_SRC.search(html), f"{page}: {REMOTE_SRC.search(html).group(0)}"
        assert "<link" not in html.replace('<link rel="shortcut icon"', "")  # styles are inline, nothing to fetch
        assert ".fa-times::before" in html and ".text-danger {" in html, f"{page}: offline stylesheet not inlined"


def test_index_lists_every_validation_as_a_static_table_with_pass_fail_icons(
    docs: tuple[Path, ValidationReport],
) -> None:
    site, report = docs
    html = (site / "index.html").read_text(encoding="utf-8")
    assert "bootstrapTable" not in html  # no browser-side rendering: the rows are in the HTML
    rows = re.findall(r"<tr>(.*?)</tr>", html, re.DOTALL)
    links = {}
    for row in rows:
        link = re.search(r'<a href="(validations/([a-z_]+)/[^"]+\.html)"', row)
        if link:
            links[link.group(2)] = (link.group(1), row)
    assert set(links) == {"samples_snapshot", "samples_channel", "features", "features_timeline"}
    for suite, (href, row) in links.items():
        assert (site / href).is_file(), f"index links to a missing page: {href}"
        failed = suite == "features"
        assert ("fa-times text-danger" in row) is failed and ("fa-check-circle text-success" in row) is not failed
    suites = re.findall(r'<a href="(expectations/[a-z_]+\.html)">', html)
    assert sorted(suites) == [f"expectations/{s}.html" for s in sorted(links)]
    assert not report.outcome("features.B2_rms.range").success


def test_failing_page_marks_the_failed_check_in_red(docs: tuple[Path, ValidationReport]) -> None:
    site, _ = docs
    (page,) = (site / "validations" / "features").rglob("*.html")
    html = page.read_text(encoding="utf-8")
    assert html.count('class="fas fa-times text-danger"') >= 1 and 'class="fas fa-check-circle text-success"' in html
    assert re.search(r'<a class="navbar-brand" href="(\.\./){4}index\.html">', html)  # home link, no remote logo

    def icon_before(check: str) -> str:  # the status icon of a check's row comes right before its description
        return re.findall(r'class="fas (fa-[a-z-]+ text-[a-z]+)"', html[: html.index(f"**{check}**")])[-1]

    assert icon_before("features.B2_rms.range") == "fa-times text-danger"
    assert icon_before("features.B2_rms.not_null") == "fa-check-circle text-success"


def test_strip_remote_assets_keeps_local_and_inline_content() -> None:
    from bearing_core.validation.data_docs import strip_remote_assets

    html = (
        '<link rel="stylesheet" href="https://cdn.example/b.css"/>\n<link rel="shortcut icon" href="./static/f.ico">\n'
        '<script src="http://cdn.example/j.js" integrity="x" crossorigin="anonymous"></script>\n'
        '<script>var a = 1;</script>\n<a href="https://greatexpectations.io">GX</a>'
    )
    assert strip_remote_assets(html) == (
        '\n<link rel="shortcut icon" href="./static/f.ico">\n\n<script>var a = 1;</script>\n'
        '<a href="https://greatexpectations.io">GX</a>'
    )
