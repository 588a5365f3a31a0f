"""One training run's output folder: never overwritten by accident, one writer at a time, no
temporary files left behind by interrupted writes, and a clean stop on Ctrl-C or SIGTERM.

RunFolder(out, resume=..., overwrite=...) is entered before any data is loaded:
- a folder that already holds a run (last.pt, best.pt or log.jsonl) is refused unless the run is
  being resumed or --overwrite was given;
- an exclusive lock on OUT/.hdkd.lock (fcntl, released by the OS when the process dies, so a
  crashed run never blocks the next one) keeps a second process out, naming the holder's PID;
- temporary files of writes that a crash interrupted (hdkd's own names only: .NAME.XXXXXXXX.tmp)
  are removed.

StopRequest turns the first SIGINT/SIGTERM into a request that the trainer honours at its next
safe point (after the current step, writing last.pt for it; with several processes, at the end
of the epoch); a second SIGINT stops at once.
"""
from __future__ import annotations

import errno
import os
import re
import signal
import threading
from pathlib import Path
from typing import Optional

RUN_FILES = ("last.pt", "best.pt", "log.jsonl")
LOCK_NAME = ".hdkd.lock"
# tempfile.mkstemp(prefix=".NAME.", suffix=".tmp") as checkpoint._replace_atomically writes them
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


class RunFolderError(RuntimeError):
    """The output folder cannot be used for this run; the message says why and what to do."""


def stale_temporaries(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_file() and _TEMPORARY.match(p.name))


class RunFolder:
    """Context manager guarding OUT for the life of one training run (see the module doc)."""

    def __init__(self, out: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
                 command: str = "hdkd train"):
        self.out = Path(out)
        self.resume, self.overwrite, self.command = resume, overwrite, command
        self._lock_file = None
        self.removed: list[Path] = []

    def check_not_a_finished_run(self) -> None:
        """Refuses a folder holding an earlier run unless resuming or overwriting (no side
        effects: safe to call before anything is loaded)."""
        if self.resume or self.overwrite or not self.out.is_dir():
            return
        found = [name for name in RUN_FILES if (self.out / name).exists()]
        if found:
            raise RunFolderError(
                f"{self.command}: {str(self.out)!r} already holds a run ({', '.join(found)}); "
                f"pass --resume {self.out / 'last.pt'} to continue it or --overwrite to replace "
                f"it")

    def __enter__(self) -> "RunFolder":
        self.check_not_a_finished_run()
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock()
        for path in stale_temporaries(self.out):
            path.unlink(missing_ok=True)
            self.removed.append(path)
        return self

    def __exit__(self, *exc) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the lock
            self._lock_file = None

    def _lock(self) -> None:
        import fcntl

        f = open(self.out / LOCK_NAME, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                f.close()
                raise
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise RunFolderError(
                f"{self.command}: another process (PID {holder}) is writing to "
                f"{str(self.out)!r}; wait for it to finish or choose another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock_file = f


class StopRequest:
    """While entered (in the main thread): the first SIGINT or SIGTERM sets `requested` and is
    reported through `on_request`; a second SIGINT raises KeyboardInterrupt at once. The previous
    handlers are restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, on_request=lambda name: None):
        self.requested: Optional[str] = None
        self._on_request = on_request
        self._previous: dict = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.requested is None:
            self.requested = name
            self._on_request(name)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
