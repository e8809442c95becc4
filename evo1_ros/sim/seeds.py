"""The seed protocol: which episode seeds are for what.

- `train`: demonstrations (`evo1-ros record-sim` records only these). The bundled checkpoint's
  demos were seeds 1000..1199.
- `dev`: tuning (chunk settings, thresholds, which checkpoint to keep). The evaluations made
  before this protocol existed (seeds 0..49) are here: their figures are dev figures.
- `test`: the reported figures; each checkpoint's card reports `test` once, tuned on nothing.

A seed fixes one episode's layout and look for a given task and scene (`sim/tasks.py`,
`sim/scenes.py`); the same seed in another task or scene is another episode, so one range serves
every task and scene. `--seeds NAME[+OFFSET]` names a range's first seed (plus an offset).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SeedRange:
    name: str
    first: int
    stop: int  # one past the last
    use: str

    def __contains__(self, seed: int) -> bool:
        return self.first <= seed < self.stop

    def describe(self) -> str:
        return f"{self.name:5s} {self.first:>7d}..{self.stop - 1:<7d} {self.use}"


SEED_RANGES = {r.name: r for r in (
    SeedRange("dev", 0, 1000, "tuning; the evals before this protocol (seeds 0..49) were dev"),
    SeedRange("train", 1000, 100_000, "demonstrations (record-sim); the bundled checkpoint's were 1000..1199"),
    SeedRange("test", 100_000, 110_000, "reported figures: each checkpoint's card reports test once"),
)}


def protocol() -> str:
    """The protocol as lines of text, for the commands to print."""
    return "seed ranges:\n" + "\n".join("  " + r.describe() for r in SEED_RANGES.values())


def range_of(seed: int) -> SeedRange | None:
    return next((r for r in SEED_RANGES.values() if seed in r), None)


def parse_seeds(text: str) -> int:
    """`NAME` or `NAME+OFFSET` (e.g. `test`, `test+50`) -> the first seed it names."""
    name, _, offset = text.partition("+")
    if name not in SEED_RANGES:
        raise ValueError(f"unknown seed range {name!r}; known: {', '.join(SEED_RANGES)} (NAME or NAME+OFFSET)")
    try:
        value = int(offset) if offset else 0
    except ValueError:
        raise ValueError(f"seed offset {offset!r} in {text!r} is not a whole number") from None
    seeds = SEED_RANGES[name]
    if not 0 <= value < seeds.stop - seeds.first:
        raise ValueError(f"offset {value} is outside range {name} ({seeds.stop - seeds.first} seeds)")
    return seeds.first + value


def check_episodes(first: int, episodes: int, allowed: tuple[str, ...] | None = None) -> SeedRange | None:
    """The range seeds first..first+episodes-1 lie in. Raises ValueError when they straddle two
    ranges or leave them, or (with `allowed`) lie outside the allowed ranges; a run wholly
    outside every range returns None (allowed only without `allowed`)."""
    last = first + episodes - 1
    where, end = range_of(first), range_of(last)
    if where is not end:
        raise ValueError(f"seeds {first}..{last} straddle seed ranges "
                         f"({where.name if where else 'none'} .. {end.name if end else 'none'}); {protocol()}")
    if allowed is not None and (where is None or where.name not in allowed):
        raise ValueError(f"seeds {first}..{last} are {'in range ' + where.name if where else 'in no range'}; "
                         f"this command takes only {' or '.join(allowed)} seeds. {protocol()}")
    return where
