"""Look at the Prefect UI as a user would: headless Chromium renders the pages, this script checks what they show.

    .venv/bin/python scripts/ui_check.py [--api http://127.0.0.1:4200/api] [--out DIR]

against a running ``make serve`` with at least one finished pipeline run: the latest run report artifact (every
image must load: a broken image has naturalWidth 0), the Custom run form of the manual deployment (every
parameter headed by its title, not its Python name: Prefect's fallback), the
deployments list and the latest failed flow run (its state message must be one readable line, not a traceback).
PNG screenshots go to ``--out``; exit 1 with one line per problem. tests/test_ui_browser.py runs it on a
throw-away server.

Chromium (Debian package ``chromium``) is driven over the DevTools protocol on a loopback port, with the
``websockets`` client Prefect already depends on; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^\s+File \".+\", line \d+", re.M)


def find_chromium() -> str | None:
    """The first Chromium on PATH (None when there is none)."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Page:
    """One browser tab over the DevTools protocol (synchronous, one request at a time)."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self._ws = connect(ws_url, max_size=64 * 1024 * 1024, open_timeout=30)
        self._id = 0

    def send(self, method: str, timeout_s: float = 60.0, **params: Any) -> dict[str, Any]:
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            message = json.loads(self._ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def goto(self, url: str, ready_js: str, timeout_s: float = 60.0) -> bool:
        """Open ``url``; wait until ``ready_js`` is true (the UI renders after its API calls). False on timeout."""
        self.send("Page.navigate", url=url)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.evaluate(f"Boolean({ready_js})"):
                time.sleep(1.0)  # let the last images and fonts settle
                return True
            time.sleep(0.5)
        return False

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]  # the viewport: the UI scrolls inside it
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self._ws.close()


@contextmanager
def chromium(binary: str, width: int = 1400, height: int = 1000) -> Iterator[Page]:
    """Headless Chromium on a loopback DevTools port; yields its first tab."""
    profile = tempfile.mkdtemp(prefix="ui-check-chromium-")
    proc = subprocess.Popen(
        [
            binary,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-sync",
            "--hide-scrollbars",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    page = None
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start: {proc.stderr.read() if proc.stderr else ''}"[:2000])
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            tabs = [t for t in json.load(response) if t.get("type") == "page"]
        page = Page(tabs[0]["webSocketDebuggerUrl"])
        page.send("Page.enable")
        page.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        yield page
    finally:
        if page is not None:
            page.close()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(profile, ignore_errors=True)


@dataclass
class Findings:
    """What the pages showed: screenshots taken and problems found."""

    screenshots: dict[str, Path] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)


_IMAGES_JS = (
    "Array.from(document.images).map(i => ({src: i.src.slice(0, 40), complete: i.complete, width: i.naturalWidth}))"
)
_TEXT_JS = "document.body ? document.body.innerText : ''"
_CLIPPED_JS = """(() => {
  const out = new Set();
  for (const table of document.querySelectorAll('table')) {
    let box = table.parentElement;
    while (box && getComputedStyle(box).overflowX === 'visible') box = box.parentElement;
    const right = box ? box.getBoundingClientRect().right : window.innerWidth;
    const heads = Array.from(table.querySelectorAll('th')).map(th => th.innerText.trim());
    for (const cell of table.querySelectorAll('th, td'))
      if (cell.getBoundingClientRect().right > right + 1) out.add(heads[cell.cellIndex] || String(cell.cellIndex));
  }
  return Array.from(out);
})()"""


@contextmanager
def _client(api: str) -> Iterator[Any]:
    """A Prefect client of the server at ``api`` (never a temporary server of its own)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        yield client


def form_labels(schema: dict[str, Any]) -> dict[str, str]:
    """The heading Prefect's form shows above each flow parameter: its title, else the title of the model its
    ``$ref`` names, else the parameter's name."""
    definitions = schema.get("definitions") or {}
    labels = {}
    for name, prop in (schema.get("properties") or {}).items():
        ref = str(prop.get("$ref") or "").rsplit("/", 1)[-1]
        labels[name] = str(prop.get("title") or (definitions.get(ref) or {}).get("title") or name)
    return labels


def check_ui(api: str, out: Path, binary: str | None = None, report_key: str | None = None) -> Findings:
    """Render and check the pages (see the module doc); screenshots in ``out``."""
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort

    binary = binary or find_chromium()
    if binary is None:
        raise RuntimeError("no chromium on PATH (apt-get install chromium)")
    out.mkdir(parents=True, exist_ok=True)
    ui = api.rstrip("/").removesuffix("/api")
    found = Findings()
    with _client(api) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=report_key or "report-")),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
        validation = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="validation-")),
            sort=ArtifactSort.CREATED_DESC,
            limit=2,
        )
        deployment = client.read_deployment_by_name("pipeline/manual-pipeline")
        failed = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.FAILED]))
            ),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
    with chromium(binary) as page:
        # the run report artifact: every image loads
        if not artifacts:
            found.problems.append("no run report artifact (key report-...) on the server")
        else:
            artifact = artifacts[0]
            ok = page.goto(
                f"{ui}/artifacts/artifact/{artifact.id}",
                "document.images.length >= 2 && Array.from(document.images).every(i => i.complete)",
            )
            found.screenshots["report artifact"] = page.screenshot(out / "report-artifact.png")
            images = page.evaluate(_IMAGES_JS) or []
            for k in range(len(images)):  # each plot scrolled into view
                page.evaluate(f"document.images[{k}].scrollIntoView({{block: 'center'}})")
                time.sleep(0.5)
                found.screenshots[f"report artifact, image {k + 1}"] = page.screenshot(
                    out / f"report-image-{k + 1}.png"
                )
            page.evaluate(
                "Array.from(document.querySelectorAll('h2')).find(h => h.innerText.startsWith('Detection'))"
                "?.scrollIntoView({block: 'start'})"
            )
            time.sleep(0.5)
            found.screenshots["report artifact, detection"] = page.screenshot(out / "report-detection.png")
            text = page.evaluate(_TEXT_JS) or ""
            found.facts["report images"] = images
            broken = [i for i in images if not i["complete"] or i["width"] == 0]
            plots = [i for i in images if i["src"].startswith("data:image/png")]
            if not ok or len(plots) < 2:
                found.problems.append(
                    f"report artifact: expected 2 embedded plots, the page shows {len(plots)} ({images})"
                )
            if broken:
                found.problems.append(f"report artifact: {len(broken)} broken image(s): {broken}")
            for wanted in ("Detection against the ground truth", "lead time (h)", "false alarms", "Outputs"):
                if wanted not in text:
                    found.problems.append(f"report artifact: {wanted!r} not shown")
            clipped = page.evaluate(_CLIPPED_JS)
            if clipped:
                found.problems.append(f"report artifact: table columns cut off at the page's edge: {clipped}")
        # the validation artifacts: in markdown, check names such as features.<channel>_rms.range read as written
        # (unescaped, they are HTML tags the UI drops); the checks table fits the page (its last column visible)
        for artifact in validation:
            kind = "table" if artifact.type == "table" else "markdown"
            page.goto(
                f"{ui}/artifacts/artifact/{artifact.id}",
                "document.body && document.body.innerText.includes('features.')",
            )
            found.screenshots[f"validation {kind}"] = page.screenshot(out / f"validation-{kind}.png")
            if kind == "markdown" and "features.<channel>_" not in (page.evaluate(_TEXT_JS) or ""):
                found.problems.append("validation artifact: 'features.<channel>_...' is not shown as written")
            clipped = page.evaluate(_CLIPPED_JS)
            found.facts[f"validation {kind}: clipped columns"] = clipped
            if clipped:
                found.problems.append(f"validation {kind} artifact: columns cut off at the page's edge: {clipped}")
        # the Custom run form of the manual deployment
        ok = page.goto(
            f"{ui}/deployments/deployment/{deployment.id}/run",
            "document.body && document.body.innerText.includes('raw_dir') "
            "|| document.querySelectorAll('form input').length > 3",
        )
        found.screenshots["custom run form"] = page.screenshot(out / "custom-run-form.png")
        if not ok:
            found.problems.append("custom run form: the parameter form did not render")
        form_text = page.evaluate(_TEXT_JS) or ""
        found.facts["form mentions data/processed/"] = "data/processed/" in form_text
        (out / "custom-run-form.txt").write_text(form_text, encoding="utf-8")  # beside its screenshot
        labels = form_labels(deployment.parameter_openapi_schema or {})
        found.facts["custom run form: section titles"] = labels
        for name, label in labels.items():
            if label == name:
                found.problems.append(f"custom run form: parameter {name!r} is headed by its Python name")
            elif f"{label} (Optional)" not in form_text and f"\n{label}\n" not in form_text:
                found.problems.append(f"custom run form: no section headed {label!r} (parameter {name!r})")
        # the deployments list: the descriptions of prefect.yaml
        page.goto(f"{ui}/deployments", "document.body && document.body.innerText.includes('manual-pipeline')")
        found.screenshots["deployments"] = page.screenshot(out / "deployments.png")
        found.facts["deployments list shows the description"] = bool(
            deployment.description and deployment.description[:40] in (page.evaluate(_TEXT_JS) or "")
        )
        # the deployment's description (prefect.yaml): Prefect 3.7's UI shows it on the deployment's Description
        # tab, not on the deployments list
        description = " ".join((deployment.description or "").split())[:60]
        ok = page.goto(
            f"{ui}/deployments/deployment/{deployment.id}?tab=Description",
            f"document.body && document.body.innerText.includes({json.dumps(description)})",
        )
        found.screenshots["deployment description"] = page.screenshot(out / "deployment-description.png")
        if not description or not ok:
            found.problems.append("deployment page: the description of prefect.yaml is not shown")
        # the latest failed run: one readable line, no traceback, as its state message
        if failed:
            run = failed[0]
            message = run.state.message if run.state else ""
            found.facts["failed run state"] = f"{run.state.name if run.state else '?'}: {message}"
            page.goto(
                f"{ui}/runs/flow-run/{run.id}",
                f"document.body && document.body.innerText.includes({json.dumps(run.name)})",
            )
            time.sleep(2)  # the logs panel loads after the header
            found.screenshots["failed run"] = page.screenshot(out / "failed-run.png")
            text = page.evaluate(_TEXT_JS) or ""
            if TRACEBACK.search(message or ""):
                found.problems.append(f"failed run: the state message is a traceback: {message[:300]}")
            if run.state and run.state.name == "TimedOut":
                found.problems.append(f"failed run: ended as TimedOut: {message[:300]}")
            header = text.split("Logs")[0] if "Logs" in text else text[:3000]
            if TRACEBACK.search(header):
                found.problems.append("failed run: the page shows a traceback above the logs")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ui_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", default=os.environ.get("PREFECT_API_URL", "http://127.0.0.1:4200/api"))
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bearing-ui-check")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bearing_core.env import configure_environment

    configure_environment()  # offline: no analytics, no telemetry, before prefect is imported
    found = check_ui(args.api, args.out)
    for name, path in found.screenshots.items():
        print(f"{name}: {path}")
    for key, value in found.facts.items():
        print(f"{key}: {value}")
    for problem in found.problems:
        print(f"ui_check: problem: {problem}", file=sys.stderr)
    return 1 if found.problems else 0


if __name__ == "__main__":
    sys.exit(main())
