"""Files written and read safely: atomic writes that leave the previous file intact (``WriteError``
when the disk refuses), JSON read with the caller's error, exclusive locks. No torch here (the
torch-free matcher uses it): torch files are ``lib/torch_files.py``'s.
"""

import contextlib
import glob
import json
import os
import tempfile
import time

from lib.errors import RunError

try:  # POSIX; Windows has msvcrt's byte-range locks instead
    import fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    fcntl = None
    import msvcrt


class LoadError(RunError):
    """A file could not be read or was refused (the default error of ``read_json`` and
    ``torch_files.safe_torch_load``)."""


class WriteError(RunError):
    """A file could not be written (disk full, file too large, no permission, read-only disk);
    the file that was there before, if any, is unchanged. Not an ``OSError`` on purpose: callers
    that skip one bad input and go on must not go on writing to a full disk."""


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def atomic_write(path, write, text=False):
    """Call ``write(handle)`` on a temporary file in the same folder, flush it to disk, then
    rename it over ``path``. An interrupted or failed write leaves the previous file intact and
    no temporary; a failure of the file system (full, read-only, no permission) raises
    ``WriteError`` naming ``path``. ``text`` opens the temporary in text mode (UTF-8, no newline
    translation)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    mode = {"mode": "w", "encoding": "utf-8", "newline": ""} if text else {"mode": "wb"}
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600; give what open() would have given
        with os.fdopen(fd, **mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        cause = _os_error_behind(err)
        if cause is None or isinstance(err, KeyboardInterrupt):
            raise
        raise write_failure(path, cause) from err
    _fsync_folder(folder)


def write_failure(path, cause):
    """The ``WriteError`` for ``path`` whose writing failed with the ``OSError`` ``cause``."""
    return WriteError(
        f"{path}: could not be written ({cause.strerror or cause}); the file there before, if "
        "any, is unchanged: make room or fix the folder, then run the same command again"
    )


def _os_error_behind(err):
    """The ``OSError`` that ``err`` is or was raised while handling (torch.save turns a failed
    write into a RuntimeError about zip positions), or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def remove_stale_temporaries(folder, names=("*.ckpt", "configuration.yaml")):
    """Delete the temporaries that a process killed inside ``atomic_write`` left in ``folder``
    for files matching ``names``; returns their paths. Only for a folder no other process is
    writing to."""
    stale = []
    for name in names:
        stale += glob.glob(os.path.join(glob.escape(os.fspath(folder)), f"{name}.*.tmp"))
    for path in sorted(stale):
        os.remove(path)
    return sorted(stale)


def _fsync_folder(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_json(path, error=None):
    """The JSON value in ``path``, or None when there is no such file; ``error`` (default
    ``LoadError``) naming the file when it cannot be read or parsed."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as err:
        raise (error or LoadError)(f"{path}: unreadable ({err})") from err


@contextlib.contextmanager
def exclusive_lock(path, waiting=None):
    """Hold an exclusive lock on the file ``path`` (made if missing) for the ``with`` block, so
    that one process at a time writes what it guards; ``waiting()`` is called once when another
    process holds it (then this one waits). The lock goes with the process: a killed holder
    leaves nothing to clean up."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting is not None:
                    waiting()
                fcntl.flock(fd, fcntl.LOCK_EX)
        else:  # pragma: no cover
            told = False
            while True:
                try:
                    msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                    break
                except OSError:
                    if waiting is not None and not told:
                        waiting()
                        told = True
                    time.sleep(0.2)
        yield
    finally:
        os.close(fd)  # closing releases the lock
