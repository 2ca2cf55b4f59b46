"""Shares of a py-spy profile (collapsed stacks, ``py-spy record --format raw``): per part of
the server, the inclusive share of the samples whose stack passes through it, and the
functions with the most self time.

    .venv/bin/python bench/profile_shares.py DIR/after-round1.txt [more files of one tree]

The parts are matched on the frames' ``function (path:line)`` text (``PARTS``: a package's
path as py-spy prints it, relative to site-packages, e.g. ``(quart/``); a sample counts once
per part however many of its frames match. Samples are summed over the files
given (e.g. every round of one tree from ``bench/peers_entry_read.py --sample DIR``).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

#: part → (substrings of a frame, any of which puts the sample in the part)
PARTS: dict[str, tuple[str, ...]] = {
    "Quart and quart-trio": ("(quart/", "(quart_trio/"),
    "werkzeug": ("(werkzeug/",),
    "direct path (innera/api/direct.py)": ("innera/api/direct.py",),
    "authentication and rate limit": ("authenticated (", "count_request (",
                                      "innera/auth/", "innera/guards/ratelimit.py"),
    "entry read (batcher, PostgreSQL, decryption)": ("innera/entries/", "(psycopg/",
                                                     "innera/db/", "innera/crypto/"),
    "serialization (json_payload, entry_out)": ("json_payload (", "entry_out (",
                                                "model_dump_json (", "iso_utc ("),
    "access log line": ("log_request_completed (",),
    "metrics": ("observe_request (", "(prometheus_client/"),
    "fast server (innera/http/fast)": ("innera/http/fast/",),
    "Trio's run loop and I/O": ("(trio/",),
}

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def read_samples(paths: Iterable[Path]) -> Counter[tuple[str, ...]]:
    """Each distinct stack (its frames, outermost first) → its number of samples."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def shares(stacks: Counter[tuple[str, ...]]) -> dict[str, float]:
    total = sum(stacks.values()) or 1
    found = Counter[str]()
    for frames, count in stacks.items():
        for part, needles in PARTS.items():
            if any(needle in frame for frame in frames for needle in needles):
                found[part] += count
    return {part: found[part] / total for part in PARTS}


def self_time(stacks: Counter[tuple[str, ...]], top: int) -> list[tuple[str, float]]:
    total = sum(stacks.values()) or 1
    leaves = Counter[str]()
    for frames, count in stacks.items():
        match = _FRAME.match(frames[-1])
        leaf = (f"{match['func']} ({Path(match['file']).name})" if match else frames[-1])
        leaves[leaf] += count
    return [(leaf, count / total) for leaf, count in leaves.most_common(top)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=12, help="functions by self time")
    args = parser.parse_args(argv)
    stacks = read_samples(args.files)
    print(f"{sum(stacks.values())} samples in {len(args.files)} file(s)\n")
    print("| part | inclusive share |\n| --- | --- |")
    for part, share in shares(stacks).items():
        print(f"| {part} | {share:.1%} |")
    print("\n| function (self time) | share |\n| --- | --- |")
    for leaf, share in self_time(stacks, args.top):
        print(f"| `{leaf}` | {share:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
