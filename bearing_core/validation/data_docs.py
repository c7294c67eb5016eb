"""Offline Data Docs: the Great Expectations site of a validation run, readable without network access.

GX 1.24's page templates pull Bootstrap, Font Awesome, jQuery, bootstrap-table, Vega and the GX logo from CDNs
(``page.j2``, ``index_page.j2``, ``js_script_imports.j2``, ``top_navbar.j2``). On a site without internet the
pages render unstyled, pass/fail icons are invisible and the index page's tables stay empty, because
bootstrap-table fills them in the browser. The docs written next to a dataset must work where the data is, so
the site is rendered with two GX views configured in :func:`site_config` (GX's documented ``view`` hook of the
site section and index builders) that:

* look templates up in :data:`TEMPLATES_DIR` first: ``bootstrap_table.j2`` renders the index tables as static
  HTML (a link per row to its page), ``top_navbar.j2`` drops the remote logo, and ``data_docs_custom_styles.css``
  (which GX inlines into every page) is a small offline stand-in for the Bootstrap/Font Awesome subset the pages
  use: layout, tables, pass/fail colours and icons, and a CSS-only "Failed Only" filter;
* remove every ``<link>`` / ``<script>`` tag that loads a network URL from the rendered page
  (:func:`strip_remote_assets`), wherever a template hard-codes it.

Every page is therefore self-contained (its styles inline, its images under ``static/``). This module imports
Great Expectations, so it is imported only where a validation runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from great_expectations.render.view import (
    DefaultJinjaIndexPageView,
    DefaultJinjaPageView,
)
from jinja2 import BytecodeCache, ChoiceLoader, FileSystemLoader
from jinja2.bccache import Bucket

TEMPLATES_DIR = Path(__file__).resolve().parent / "data_docs_templates"
"""Templates and stylesheet that take precedence over GX's own (same file names)."""

_REMOTE_ASSET = re.compile(
    r"<link\b[^>]*\bhref\s*=\s*[\"']?https?://[^>]*>"
    r"|<script\b[^>]*\bsrc\s*=\s*[\"']?https?://[^>]*>\s*</script\s*>",
    re.IGNORECASE,
)


def strip_remote_assets(html: str) -> str:
    """``html`` without the ``<link>`` and ``<script>`` tags that load a network (http/https) URL."""
    return _REMOTE_ASSET.sub("", html)


class _MemoryBytecodeCache(BytecodeCache):
    """Compiled templates kept in memory for the process, shared by every view.

    GX builds a new Jinja environment for each view, so each page render parsed and compiled its templates again
    (~200 compilations, about an eighth of a validation run). Jinja checks each entry against its template's
    source checksum, so an edited template is compiled afresh.
    """

    def __init__(self) -> None:
        self._code: dict[str, bytes] = {}

    def load_bytecode(self, bucket: Bucket) -> None:
        code = self._code.get(bucket.key)
        if code is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: Bucket) -> None:
        self._code[bucket.key] = bucket.bytecode_to_string()


_BYTECODE = _MemoryBytecodeCache()


class _OfflineViewMixin:
    """Our templates first in the Jinja loader, remote assets removed from the rendered page."""

    env: Any

    def __init__(self, custom_styles_directory: str | None = None, custom_views_directory: str | None = None) -> None:
        super().__init__(custom_styles_directory, custom_views_directory)  # type: ignore[call-arg]
        self.env.loader = ChoiceLoader([FileSystemLoader(TEMPLATES_DIR), self.env.loader])
        self.env.bytecode_cache = _BYTECODE

    def render(self, document: Any, template: str | None = None, **kwargs: Any) -> str:
        return strip_remote_assets(super().render(document, template, **kwargs))  # type: ignore[misc]


class OfflinePageView(_OfflineViewMixin, DefaultJinjaPageView):
    """Validation-result and expectation-suite pages, rendered for offline reading."""


class OfflineIndexPageView(_OfflineViewMixin, DefaultJinjaIndexPageView):
    """The site index (``index.html``), rendered for offline reading with static tables."""


def site_config(docs_dir: Path) -> dict[str, Any]:
    """GX ``data_docs_sites`` entry of a local site in ``docs_dir`` rendered with the offline views (no how-to
    buttons)."""
    page_view = {"module_name": __name__, "class_name": OfflinePageView.__name__}
    return {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        "site_section_builders": {
            "expectations": {"view": page_view},
            "validations": {"view": page_view},
            "profiling": {"view": page_view},
        },
        "site_index_builder": {
            "class_name": "DefaultSiteIndexBuilder",
            "view": {"module_name": __name__, "class_name": OfflineIndexPageView.__name__},
        },
    }
