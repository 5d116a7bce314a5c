"""Atomic file writes: a crash or a full disk never leaves a half-written file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


class WriteError(OSError):
    """A file could not be written (a full disk, no permission); what was there is kept."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno N]" prefix
        return str(self.strerror)


def write_error(path: Path, e: OSError, kept: str) -> WriteError:
    """One line naming the file, the system's reason and what was kept."""
    return WriteError(e.errno, f"cannot write {path}: {e.strerror or e}; {kept}")


def atomic_write(path: str | Path, write) -> None:
    """Call `write(tmp_path)`, fsync, then rename over `path` (atomic on POSIX). On any error
    the temporary file is removed and `path` is as it was; an OSError (a full disk) becomes a
    `WriteError` naming `path`."""
    path = Path(path)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e, "nothing was changed") from e
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _plain_mode(tmp, path)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, e, "the previous file is kept" if existed else
                          "no partial file is left") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _plain_mode(tmp: str, path: Path) -> None:
    """mkstemp makes the file private (0600): give it the mode of the file it replaces, or the
    one a plain write would have under the process's umask, read without setting it (os.umask
    would change it for a moment under every other thread). Where the umask cannot be read, or
    the filesystem takes no modes, the file stays private."""
    try:
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
            return
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                os.chmod(tmp, 0o666 & ~int(line.split()[1], 8))
                return
    except OSError:
        pass

