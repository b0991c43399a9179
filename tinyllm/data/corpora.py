"""Corpora: where text comes from, how it is split, and how training batches are drawn.

Named corpora resolve to a file in the data directory: ``$TINYLLM_DATA`` when set, else
``~/.cache/tinyllm``. A corpus with a public URL is downloaded into the cache on first use
(checked against its sha256, written atomically); without network and without the file, the
error says exactly where to put it. Any path to a local text file works in place of a name.

    text = load_text("tinyshakespeare")
    train, val = train_val_split(ids)              # first 90% / last 10%, as nanoGPT
    x, y = get_batch(train, 12, 64, rng)           # (B, T) windows and their next tokens

Only the standard library and NumPy: this module never touches tensors (imports flow one way).
"""
import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyllm._files import atomic_write_bytes, sha256_file


@dataclass(frozen=True)
class Corpus:
    filename: str              # file name in the data directory
    sha256: str                # of the file's bytes; checked after a download
    url: str | None = None     # canonical public source, None if it must be provided locally
    credit: str = ""           # attribution its licence asks for


CORPORA = {
    "tinyshakespeare": Corpus(
        "tinyshakespeare.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/"
        "input.txt",
        "tiny shakespeare, from Andrej Karpathy's char-rnn (public domain text)"),
    "sentiment_train": Corpus(
        "sentiment_train.tsv",
        "561531869f82954d4a1e35bf7f91be4c5737d4027e1b79d4e31201f060184380",
        credit="Sentiment Labelled Sentences (Kotzias et al., KDD 2015), UCI Machine Learning "
               "Repository, CC BY 4.0"),
    "sentiment_test": Corpus(
        "sentiment_test.tsv",
        "ebdd4902f56eae19e02ea2f1ecae288e4f2c7feb57dbfafbf46e187a091d11aa",
        credit="Sentiment Labelled Sentences (Kotzias et al., KDD 2015), UCI Machine Learning "
               "Repository, CC BY 4.0"),
    "eng_fra": Corpus(
        "eng_fra_tatoeba_20k.tsv",
        "1d6f5f6753924b62354d4f398dd8bf6d3cda67f64836d09dc319971071c577e8",
        credit="Sentence pairs from the Tatoeba Project (https://tatoeba.org), CC BY 2.0 FR, "
               "via www.manythings.org/anki"),
}


def data_dir():
    """The directory corpora are read from: $TINYLLM_DATA, else ~/.cache/tinyllm."""
    env = os.environ.get("TINYLLM_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tinyllm"


def corpus_path(name, download=True, timeout=30):
    """Path to corpus ``name`` (a registry name or a path to an existing file).

    For a registry name whose file is missing, try to download it (when it has a URL and
    ``download``), else raise FileNotFoundError naming the directory, the file name and the
    source.
    """
    if name not in CORPORA:
        path = Path(name).expanduser()
        if path.is_file():
            return path
        if path.is_dir():
            raise IsADirectoryError(f"corpus {name!r}: is a directory; expected a text file "
                                    f"(or a registered corpus: {', '.join(sorted(CORPORA))})")
        raise FileNotFoundError(f"corpus {name!r}: not a registered corpus "
                                f"({', '.join(sorted(CORPORA))}) and no such file")
    corpus = CORPORA[name]
    path = data_dir() / corpus.filename
    if path.is_file():
        return path
    if download and corpus.url:
        try:
            return _download(corpus, path, timeout)
        except OSError as e:
            reason = f"downloading {corpus.url} failed ({e})"
    else:
        reason = "it has no public download" if not corpus.url else "download=False"
    raise FileNotFoundError(
        f"corpus {name!r}: {path} does not exist and {reason}. Put {corpus.filename} in "
        f"{path.parent} (or set TINYLLM_DATA to the directory that holds it)"
        + (f"; its source is {corpus.url}" if corpus.url else ""))


def _download(corpus, path, timeout):
    """Fetch, verify sha256, then write atomically (temp file in the same directory + rename)."""
    with urllib.request.urlopen(corpus.url, timeout=timeout) as response:
        data = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if corpus.sha256 and digest != corpus.sha256:
        raise OSError(f"sha256 mismatch: got {digest}, expected {corpus.sha256}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path


def verify(name):
    """True when the file of registered corpus ``name`` has the registry's sha256."""
    corpus = CORPORA[name]
    return sha256_file(corpus_path(name, download=False)) == corpus.sha256


def load_text(name, download=True):
    """The corpus as one string (UTF-8)."""
    return read_text(corpus_path(name, download))


def read_text(path):
    """A text file as one string; a file that is not UTF-8 is a ValueError naming the file and
    the first bad byte's offset (not a bare UnicodeDecodeError)."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"corpus {str(path)!r}: not UTF-8 text: byte 0x{data[e.start]:02x} at "
                         f"offset {e.start} ({e.reason}); convert it with e.g. "
                         f"`iconv -f latin1 -t utf-8`") from None


def corpus_record(name, download=True):
    """What a run records about its corpus so it can find the very same text later, from any
    directory and without environment variables: the name given, the resolved absolute path,
    its size and sha256."""
    path = corpus_path(name, download).resolve()
    return {"name": str(name), "path": str(path), "bytes": path.stat().st_size,
            "sha256": sha256_file(path)}


def find_recorded_corpus(record, data=None):
    """The path of the corpus a run recorded (``corpus_record``): ``data`` when given (a moved
    copy), else the recorded path, else the recorded name resolved again (a registered corpus
    in $TINYLLM_DATA or the cache). The file must have the recorded sha256: a changed or
    missing corpus is an error naming it, never another text silently."""
    want = record["sha256"]
    if data is not None:
        path = corpus_path(data).resolve()
        got = sha256_file(path)
        if got != want:
            raise ValueError(f"corpus {str(path)!r}: sha256 {got[:16]}... is not the run's "
                             f"corpus ({record['path']}, sha256 {want[:16]}...)")
        return path
    recorded = Path(record["path"])
    if recorded.is_file():
        got = sha256_file(recorded)
        if got == want:
            return recorded
        raise ValueError(f"corpus {record['path']!r} changed since the run recorded it "
                         f"(sha256 {got[:16]}..., recorded {want[:16]}...); pass --data with a "
                         f"copy of the original")
    try:
        path = corpus_path(record["name"], download=True).resolve()
    except OSError:
        path = None
    if path is not None and sha256_file(path) == want:
        return path
    raise FileNotFoundError(f"corpus {record['path']!r}: the run's corpus is missing (sha256 "
                            f"{want[:16]}...); pass --data with a copy of it")


def train_val_split(data, val_fraction=0.1):
    """First (1 - val_fraction) of ``data`` to train on, the rest to validate on (no shuffle:
    deterministic, and no window straddles the boundary)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"train_val_split: val_fraction must be in (0, 1), got {val_fraction}")
    n = int(len(data) * (1 - val_fraction))
    return data[:n], data[n:]


def get_batch(data, batch_size, block_size, rng):
    """Random windows of ``data`` (1-D int array): x (B, T) and y (B, T), y the next tokens.

    Window starts are drawn uniformly from [0, len(data) - T - 1] with ``rng`` (a NumPy
    Generator), so a seeded generator repeats the batches exactly.
    """
    data = np.asarray(data)
    if len(data) <= block_size:
        raise ValueError(f"get_batch: {len(data)} tokens cannot fill a window of "
                         f"block_size {block_size} + 1")
    starts = rng.integers(0, len(data) - block_size, size=batch_size)          # (B,)
    offsets = np.arange(block_size)                                             # (T,)
    x = data[starts[:, None] + offsets]                                         # (B, T)
    y = data[starts[:, None] + offsets + 1]
    return x.astype(np.int64), y.astype(np.int64)


def _lines(name):
    # split on "\n" only: the sentiment corpus contains U+0085, which str.splitlines() would
    # treat as a line break
    text = corpus_path(name, download=False).read_text(encoding="utf-8")
    return [line for line in text.split("\n") if line]


def load_labelled_sentences(name):
    """[(text, label)] from a ``text<TAB>label`` TSV (label an int)."""
    rows = []
    for i, line in enumerate(_lines(name), 1):
        text, _, label = line.rpartition("\t")
        if not _:
            raise ValueError(f"load_labelled_sentences: line {i} of {name} has no tab")
        rows.append((text, int(label)))
    return rows


def load_sentence_pairs(name):
    """[(source, target)] from a ``source<TAB>target`` TSV."""
    rows = []
    for i, line in enumerate(_lines(name), 1):
        parts = line.split("\t")
        if len(parts) != 2:
            raise ValueError(f"load_sentence_pairs: line {i} of {name} has {len(parts) - 1} "
                             f"tabs, expected 1")
        rows.append((parts[0], parts[1]))
    return rows
