"""`evo1-ros episodes`: what a directory of episode bags holds, before it is converted.

    evo1-ros episodes demos/bags [--recover]

One line per bag: its outcome (success, failure, unmarked, interrupted and why, or unfinished: the
recorder was killed and never closed it), length in seconds, task, operator, teleop source and
instruction; then the totals `convert` will see. `--recover` rewrites unfinished bags into
complete ones (`bag.recover`: what was flushed to disk is kept, outcome unmarked).
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

from evo1_ros.data import bag


def find_bags(paths: list[Path]) -> list[Path]:
    """The bag directories among `paths` and their subdirectories (one level down), sorted."""
    found = []
    for path in paths:
        if not path.is_dir():
            raise bag.BagError(f"{path}: not a directory")
        candidates = [path] if _is_bag(path) else sorted(p for p in path.iterdir() if p.is_dir())
        found += [p for p in candidates if _is_bag(p)]
    return found


def _is_bag(path: Path) -> bool:
    return any(path.glob("*.mcap")) or any(path.glob("*.db3"))


def outcome(meta: dict, complete: bool) -> str:
    if not complete:
        return "unfinished"
    if meta.get("interrupted"):
        return "interrupted"
    return {True: "success", False: "failure"}.get(meta.get("success"), "unmarked")


def describe(path: Path) -> tuple[str, str]:
    """(outcome, one line about the bag at `path`)."""
    meta, complete = bag.read_meta(path), bag.is_complete(path)
    kind = outcome(meta, complete)
    seconds = (meta["ended_ns"] - meta["started_ns"]) / 1e9 if complete and "ended_ns" in meta else None
    why = f" ({meta['interrupted']})" if kind == "interrupted" else ""
    fields = [path.name, f"{kind}{why}", "-" if seconds is None else f"{seconds:.1f} s",
              meta.get("task") or "-", meta.get("operator") or "-", meta.get("teleop_source") or "-",
              repr(meta.get("instruction", ""))]
    return kind, "  ".join(fields)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="DIR",
                        help="episode bag directories, or directories holding them")
    parser.add_argument("--recover", action="store_true",
                        help="rewrite unfinished bags (recorder killed) into complete ones")


def run(args: argparse.Namespace) -> int:
    try:
        bags = find_bags(args.paths)
        counts = collections.Counter()
        for path in bags:
            if args.recover and not bag.is_complete(path):
                print(f"{path.name}: recovered {bag.recover(path)} messages", flush=True)
            kind, line = describe(path)
            counts[kind] += 1
            print(line, flush=True)
    except (bag.BagError, OSError, ValueError) as exc:
        print(f"evo1-ros episodes: error: {exc}", file=sys.stderr)
        return 1
    kinds = ("success", "failure", "unmarked", "interrupted", "unfinished")
    print(f"{len(bags)} episodes: " + ", ".join(f"{counts[k]} {k}" for k in kinds)
          + ("; convert skips failure and interrupted ones unless --keep-failed / --keep-interrupted; "
             "--recover completes unfinished ones" if bags else ""))
    return 0
