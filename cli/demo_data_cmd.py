"""`bearing demo-data`: write the IMS-format synthetic multi-site run-to-failure demo (bearing_core.synthetic)."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from pathlib import Path

_DEMO_ENTRY = re.compile(r"site_\d+|ground_truth\.json")
"""Entries of an output directory that a previous demo wrote (what --force replaces)."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``demo-data`` sub-command."""
    parser = subparsers.add_parser(
        "demo-data",
        help="write synthetic IMS-format demo data (several sites, some run to failure) with ground truth",
        description=(
            "Write IMS-format raw snapshot files for several sites (OUT/site_<k>/YYYY.MM.DD.hh.mm.ss: 20,480 "
            "tab-separated lines, 3 decimals, in g) and OUT/ground_truth.json. Sites differ in load, gain, noise "
            "and resonance, and show what real IMS runs show: 3-5 days per 150 files with stops of hours, a change "
            "of acquisition interval (site_1: 5 min for its first hours, then 10 min, like the IMS 1st test), "
            "run-in drift of healthy bearings, a louder cold start after each stop, and short bursts on one healthy "
            "bearing or accelerometer (listed in the ground truth as non-defects). On all but at least one healthy "
            "site, one bearing develops an outer- or inner-race defect from an onset (~60% of the files) that grows "
            "until the last file. Same arguments and seed give byte-identical files."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("data/raw/demo"), help="output directory")
    parser.add_argument("--sites", type=int, default=4, help="number of sites (one folder each)")
    parser.add_argument("--files", type=int, default=150, help="snapshot files per site")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--channels",
        type=int,
        choices=(4, 8),
        default=8,
        help="channels per file: 8 = the IMS 1st test (B1_a..B4_b, two accelerometers a bearing), 4 = the 2nd and "
        "3rd tests (B1..B4)",
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="parallel writer processes (same output)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace a previous demo in OUT (its site_<k>/ folders and ground_truth.json) instead of refusing",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate the demo; exit code 0 on success, 2 on bad arguments or a non-empty OUT without --force."""
    from pydantic import ValidationError

    from bearing_core.synthetic import GROUND_TRUTH_FILE, DemoConfig, generate_demo_from_config

    out: Path = args.out
    if out.exists() and not out.is_dir():
        print(f"error: --out {out} exists and is not a directory", file=sys.stderr)
        return 2
    existing = sorted(out.iterdir()) if out.is_dir() else []
    if existing and not args.force:
        print(
            f"error: {out} is not empty ({len(existing)} entries); pass --force to replace a previous demo",
            file=sys.stderr,
        )
        return 2
    try:
        config = DemoConfig(
            sites=args.sites, files_per_site=args.files, seed=args.seed, channels=args.channels, workers=args.workers
        )
    except ValidationError as exc:
        flags = {"files_per_site": "--files"}
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "arguments"
            print(f"error: {flags.get(field, '--' + field)}: {error['msg']}", file=sys.stderr)
        return 2

    for entry in existing:
        if _DEMO_ENTRY.fullmatch(entry.name):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    kept = [entry.name for entry in existing if not _DEMO_ENTRY.fullmatch(entry.name)]
    if kept:
        print(f"note: left {len(kept)} unrelated entries in {out}: {', '.join(kept[:5])}", file=sys.stderr)

    started = time.perf_counter()
    truth = generate_demo_from_config(out, config)
    elapsed = time.perf_counter() - started
    print(
        f"wrote {config.sites} sites x {config.files_per_site} files ({config.channels} channels, "
        f"{config.n_samples:,} samples, seed {config.seed}) to {out} in {elapsed:.1f} s"
    )
    for site, site_truth in truth.sites.items():
        stamps = truth.timestamps(site)
        intervals = " then ".join(dict.fromkeys(f"{run.interval_minutes:g}" for run in site_truth.acquisition))
        kinds = [event.kind for event in site_truth.nuisances]
        stops = sum(run.after_stop for run in site_truth.acquisition)
        timeline = (
            f"{site_truth.n_files} files over {(stamps[-1] - stamps[0]).total_seconds() / 86400:.1f} days, every "
            f"{intervals} min, {_count(stops, 'stop')}, {_count(kinds.count('burst'), 'burst')}"
        )
        if site_truth.faulty:
            print(
                f"  {site}: {timeline}; {site_truth.defect} defect on {site_truth.bearing} from "
                f"{site_truth.onset:%Y-%m-%d %H:%M:%S} (file #{site_truth.onset_index}) to failure at "
                f"{site_truth.failure:%Y-%m-%d %H:%M:%S}"
            )
        else:
            print(f"  {site}: {timeline}; healthy")
    print(f"ground truth: {out / GROUND_TRUTH_FILE}")
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
