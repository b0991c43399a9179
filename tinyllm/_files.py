"""Writing files so that a reader never sees half of one: temp file, fsync, rename.

Every file tinyllm writes (checkpoints, tokenizers, downloaded corpora, logs, figures, graph
drawings) goes through ``atomic_write``: the bytes go to a temporary file in the same directory
(a rename across file systems is a copy, not atomic), which is flushed to disk and then renamed
over the target. A crash or Ctrl-C leaves the old file or the new one, never a mix, and no
temporary file behind. The result gets the permissions a plain ``open(path, "w")`` would give
(``tempfile.mkstemp`` creates files readable by their owner only).
"""
import hashlib
import os
import tempfile


def atomic_write(path, write):
    """Call ``write(tmp_path)`` to fill a temporary file beside ``path``, then rename it to
    ``path``. Returns ``path``."""
    path = os.fspath(path)
    directory, base = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{base}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)
    return path


def atomic_write_text(path, text):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    return atomic_write(path, write)


def atomic_write_bytes(path, data):
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    return atomic_write(path, write)


def sha256_file(path):
    """The sha256 of a file's bytes, as hex (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _umask():
    mask = os.umask(0o022)          # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def _fsync_directory(directory):
    """Make the rename durable (POSIX); directories cannot be opened for this on Windows."""
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
