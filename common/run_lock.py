"""One live process per run folder: an advisory `flock` on `<run dir>/.run.lock`, held for the
whole command. The kernel drops the lock when its process ends, however it ends, so a killed run
never leaves its folder locked; the file (with the holder's pid, for the message) is removed
on a clean exit. Where there is no `fcntl` (Windows) runs are not locked."""
from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

LOCK_NAME = ".run.lock"


class RunInUse(RuntimeError):
    """Another live process holds the run folder."""


class RunLock:
    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        if fcntl is None:
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise RunInUse(in_use(self.path.parent, holder)) from None
            try:  # the file we locked may have been removed by a holder that just finished
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    @staticmethod
    def ensure_free(run_dir: str | Path) -> None:
        """Refuse at once if a live run holds `run_dir`; creates and changes nothing (the lock
        itself is taken later, once the command's checks have passed)."""
        path = Path(run_dir) / LOCK_NAME
        if fcntl is None or not path.is_file():
            return
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            raise RunInUse(in_use(path.parent, holder)) from None
        finally:
            os.close(fd)  # closing drops the lock just taken, if it was taken

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still holding it: see __enter__
            os.close(self._fd)
            self._fd = None


def in_use(run_dir: Path, holder: str) -> str:
    return (f"{run_dir} is in use by a live run (pid {holder}); wait for it to finish, or choose "
            f"another name=...")

