"""A run directory, and what ``tinyllm train`` promises about it.

    runs/shakespeare-char/
      log.json          the config, the corpus (resolved path, size, sha256), every step's loss,
                        the evaluations, the health records, the settings changed on resume
      tokenizer.json    the tokenizer the run trained
      checkpoint/       weights and optimizer state with their sha256 (tinyllm.checkpoint)
      loss.png, health.png
      .lock             held (flock) while a ``tinyllm train`` writes here

The contract:
- one writer: a run holds the directory's lock; a second ``train`` on it refuses at once. The
  operating system drops the lock when the process dies, however it dies (kill -9 included);
- nothing is overwritten by accident: a new run in a directory that holds anything refuses,
  naming the two ways on (``--resume``, ``--overwrite``), before it writes a byte, and a start
  that fails (a corpus too short, a tokenizer that cannot be trained) leaves the old run as it
  was: ``--overwrite`` deletes the old run only once the new one has everything it needs;
- every file is written whole (temp file, then rename): a crash leaves the old file or the new
  one, and what it leaves behind (temporary files, data files no meta.json names) is removed
  when the run is resumed (``clean``) and at the next checkpoint;
- the run can be evaluated, sampled, explained and resumed from any working directory without
  environment variables: log.json records the corpus's absolute path and sha256
  (``tinyllm.data.corpora.find_recorded_corpus``).
"""
import contextlib
import json
import os
import re
import shutil
from pathlib import Path

from tinyllm._files import atomic_write_text
from tinyllm.checkpoint import clean_checkpoint

LOCK_NAME = ".lock"
RUN_FILES = ("log.json", "tokenizer.json", "checkpoint", "loss.png", "health.png", LOCK_NAME)
_TEMP_FILE = re.compile(r"\..+\.tmp|log\.json\.tmp")     # atomic_write's; an older log's


class RunDirError(RuntimeError):
    """A run directory that cannot be used as asked (in use, not empty, nothing to resume)."""


try:
    import fcntl
except ImportError:         # Windows: no flock; one writer is then the user's responsibility
    fcntl = None


@contextlib.contextmanager
def locked(run):
    """Hold ``run``'s lock (creating the directory) for the duration of the block; raises
    RunDirError when another process holds it. A directory this call created and in which
    nothing was written is removed again on the way out."""
    run = Path(run)
    if run.exists() and not run.is_dir():
        raise RunDirError(f"{run} exists and is not a directory (--out-dir names a run "
                          f"directory)")
    created = not run.exists()
    run.mkdir(parents=True, exist_ok=True)
    lock = open(run / LOCK_NAME, "a+", encoding="utf-8")
    try:
        if fcntl is not None:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock.seek(0)
                holder = lock.read().strip() or "another process"
                raise RunDirError(f"{run} is in use by another tinyllm train ({holder}); wait "
                                  f"for it to end, or choose another --out-dir") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}\n")
        lock.flush()
        yield run
    finally:
        if created and os.listdir(run) == [LOCK_NAME]:       # nothing was written: undo
            os.remove(run / LOCK_NAME)
            with contextlib.suppress(OSError):
                run.rmdir()
        lock.close()                                           # closing releases the flock


def existing_run(run):
    """The entries of ``run`` that a new run would overwrite (everything but the lock)."""
    return sorted(e for e in os.listdir(run) if e != LOCK_NAME)


def check_new(run, overwrite):
    """Before a new run writes anything into ``run``: refuse a non-empty directory unless
    ``overwrite``; with it, refuse a directory holding files tinyllm did not write (an
    ``--out-dir .`` must not delete a project). Returns the entries to delete later."""
    entries = existing_run(run)
    if not entries:
        return []
    if not overwrite:
        what = "a run" if "log.json" in entries or "checkpoint" in entries else "files"
        raise RunDirError(f"{run} already holds {what} ({_listing(entries)}); continue that run "
                          f"with --resume, or start over with --overwrite (deletes it)")
    foreign = [e for e in entries if e not in RUN_FILES and not _TEMP_FILE.fullmatch(e)]
    if foreign:
        raise RunDirError(f"--overwrite: {run} holds files a tinyllm run does not write "
                          f"({_listing(foreign)}); choose another --out-dir")
    return entries


def delete(run, entries):
    """Delete the old run's ``entries`` (from ``check_new``) from ``run``."""
    for name in entries:
        path = Path(run) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def clean(run):
    """Remove what a crash left in ``run`` (temporary files; data files of a checkpoint save that
    never committed). Returns the names removed, relative to ``run``."""
    run = Path(run)
    removed = [name for name in sorted(os.listdir(run)) if _TEMP_FILE.fullmatch(name)]
    for name in removed:
        with contextlib.suppress(FileNotFoundError):
            os.remove(run / name)
    removed += [f"checkpoint/{name}" for name in clean_checkpoint(run / "checkpoint")]
    return removed


def read_log(run):
    """The run's log.json (config, corpus record, losses, evaluations)."""
    path = Path(run) / "log.json"
    if not path.is_file():
        raise RunDirError(f"{run} holds no run (no log.json): train one with tinyllm train "
                          f"--out-dir {run}")
    log = _read_json(path)
    if not isinstance(log.get("config"), dict):
        raise RunDirError(f"{path} is not a tinyllm run log (no 'config')")
    return log


def checkpoint_step(run):
    """The step of the checkpoint committed in ``run``/checkpoint; a run without one (stopped
    before its first save) is a RunDirError."""
    meta = Path(run) / "checkpoint" / "meta.json"
    if not meta.is_file():
        raise RunDirError(f"{meta.parent} holds no checkpoint (no meta.json): the run stopped "
                          f"before its first save; start it again with --overwrite")
    step = _read_json(meta).get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        raise RunDirError(f"{meta} is corrupted (step {step!r})")
    return step


def _read_json(path):
    """A JSON object from ``path``; anything else is a RunDirError naming the file."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise RunDirError(f"{path} does not hold a JSON object")
    return value


def write_log(run, log):
    atomic_write_text(Path(run) / "log.json", json.dumps(log))


def _listing(names, limit=5):
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
