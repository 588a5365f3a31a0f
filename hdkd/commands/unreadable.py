"""The end-of-run summary of input files a command could not read (predict, explain)."""
from __future__ import annotations

import sys


def report_unreadable(command: str, failures: list[tuple[str, str]], total: int) -> int:
    """Lists (path, why) of each unreadable file on stderr; the exit code: 1 if any, else 0."""
    if not failures:
        return 0
    print(f"hdkd {command}: {len(failures)} of {total} files could not be read:", file=sys.stderr)
    for path, why in failures:
        print(f"  {path}: {why}", file=sys.stderr)
    return 1
