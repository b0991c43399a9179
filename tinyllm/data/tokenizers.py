"""Tokenizers: characters, byte-level BPE (GPT-2 style) and WordPiece (BERT style).

    from tinyllm.data import CharTokenizer, ByteBPETokenizer, WordPieceTokenizer

    tok = CharTokenizer.from_text(text)                       # nanoGPT's shakespeare_char
    tok = ByteBPETokenizer.train(text, vocab_size=512, specials=("<eos>",))
    tok = WordPieceTokenizer.from_vocab_file("vocab.txt")     # a BERT vocab.txt

    ids = tok.encode("Hello there")                # list[int]
    tok.decode(ids)                                # str
    x, mask = tok.encode_batch(["a", "bb"])        # (B, T) int64 ids, (B, T) int64 attention mask
    tok.save("tok.json"); tok = type(tok).load("tok.json")    # or load_tokenizer("tok.json")

Every tokenizer shares one interface (``Tokenizer``): ``encode``, ``decode``, ``tokenize`` (the
readable pieces), ``vocab_size``, ``token_to_id``, ``id_to_token``, ``encode_batch``, ``save`` /
``load``, and explicit special tokens: ``tok.special_tokens`` maps each special string to its id,
``tok.pad_id`` / ``tok.unk_id`` / ``tok.cls_id`` / ... are its ids (None when absent). A special
token in the text is matched whole before any other splitting (never split, never lower-cased),
and ``decode(ids, skip_special_tokens=True)`` drops them.

Files are written atomically (a temp file in the same folder, then ``os.replace``), so a crash
mid-save never leaves a half-written tokenizer behind. The formats are plain JSON, readable and
diff-able; each class docstring shows its own.

This module needs only Python and NumPy (``tinyllm.data`` never imports autograd, ops or nn).
"""
import heapq
import json
import os
import re
import tempfile
import unicodedata
from collections import Counter, defaultdict

import numpy as np

# The special-token spellings used across tinyllm. BERT's live in its vocab.txt; GPT-style models
# get <bos>/<eos> (and <pad> if they need one) appended after the learned vocabulary.
PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
BOS, EOS = "<bos>", "<eos>"

FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------
# shared plumbing: atomic files, special-token splitting

def _atomic_write_text(path, text):
    """Write ``text`` to ``path`` via a temp file in the same folder and ``os.replace``.

    (tinyllm/_files.py does this for the rest of tinyllm; this file imports nothing from
    tinyllm, so that it can be used, and tested, on its own.)"""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)    # mkstemp makes it owner-only; give open()'s mode
        os.replace(tmp, path)      # atomic on POSIX and Windows: readers see old or new, never half
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_json(path, expected_type):
    """Read a tokenizer JSON file and check its "type"; ValueError naming the file otherwise."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a tokenizer file (invalid JSON: {e})") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a tokenizer file (not UTF-8 text)") from e
    if not isinstance(obj, dict) or "type" not in obj:
        raise ValueError(f"{path}: not a tinyllm tokenizer file (no \"type\" field)")
    if expected_type is not None and obj["type"] != expected_type:
        raise ValueError(f"{path}: holds a {obj['type']!r}, not a {expected_type!r}")
    if obj.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {obj.get('version')!r}, "
                         f"this tinyllm reads version {FORMAT_VERSION}")
    return obj


def _require(obj, path, key, kind):
    if key not in obj or not isinstance(obj[key], kind):
        raise ValueError(f"{path}: missing or malformed field {key!r}")
    return obj[key]


def _special_splitter(specials):
    """A compiled regex that captures any special token (longest first), or None if none."""
    if not specials:
        return None
    alternatives = sorted(specials, key=len, reverse=True)   # "<eos>x" before "<eos>"
    return re.compile("(" + "|".join(re.escape(s) for s in alternatives) + ")")


def _split_on_specials(text, splitter):
    """Yield (piece, is_special): the text cut around whole special tokens, in order."""
    if splitter is None:
        if text:
            yield text, False
        return
    # re.split with one capturing group alternates: plain, special, plain, special, ..., plain
    for i, piece in enumerate(splitter.split(text)):
        if i % 2 == 1:
            yield piece, True
        elif piece:
            yield piece, False


class Tokenizer:
    """What every tokenizer offers. Subclasses set ``self.special_tokens`` (str -> id) and
    implement ``encode``, ``decode``, ``tokenize``, ``vocab_size``, ``token_to_id``,
    ``id_to_token``, ``save`` and ``load``."""

    special_tokens = {}

    # ids of the usual special tokens, None when this tokenizer has no such token
    @property
    def pad_id(self):
        return self.special_tokens.get(PAD, self.special_tokens.get("<pad>"))

    @property
    def unk_id(self):
        return self.special_tokens.get(UNK, self.special_tokens.get("<unk>"))

    @property
    def cls_id(self):
        return self.special_tokens.get(CLS)

    @property
    def sep_id(self):
        return self.special_tokens.get(SEP)

    @property
    def mask_id(self):
        return self.special_tokens.get(MASK)

    @property
    def bos_id(self):
        return self.special_tokens.get(BOS)

    @property
    def eos_id(self):
        return self.special_tokens.get(EOS)

    @property
    def all_special_ids(self):
        return sorted(self.special_tokens.values())

    def __len__(self):
        return self.vocab_size

    def _encode_truncated(self, text, max_len, **kwargs):
        ids = self.encode(text, **kwargs)
        return ids if max_len is None else ids[:max_len]

    def encode_batch(self, texts, max_len=None, pad=True, **kwargs):
        """Encode a list of texts into a padded (B, T) int64 array and its attention mask.

        Sequences longer than ``max_len`` are cut at the end. With ``pad=True`` the shorter ones
        are right-padded: T is ``max_len`` when given, else the longest sequence. Padded positions
        hold ``pad_id`` (0 if this tokenizer has no pad token: read them through the mask, never
        as tokens) and have mask 0; real tokens have mask 1. With ``pad=False`` every sequence
        must come out the same length, else ValueError. ``kwargs`` go to ``encode``.
        """
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a list of strings; use encode for one string")
        seqs = [self._encode_truncated(t, max_len, **kwargs) for t in texts]
        lengths = [len(s) for s in seqs]
        if pad:
            T = max_len if max_len is not None else max(lengths, default=0)
        else:
            if len(set(lengths)) > 1:
                raise ValueError(f"pad=False but the sequences have different lengths {lengths}; "
                                 "pass pad=True or texts of equal token length")
            T = lengths[0] if lengths else 0
        fill = self.pad_id if self.pad_id is not None else 0
        ids = np.full((len(seqs), T), fill, dtype=np.int64)           # (B, T)
        mask = np.zeros((len(seqs), T), dtype=np.int64)               # (B, T) 1 = real token
        for b, s in enumerate(seqs):
            ids[b, :len(s)] = s
            mask[b, :len(s)] = 1
        return ids, mask

    def decode_batch(self, ids, skip_special_tokens=False):
        """Decode each row of a (B, T) array or list of lists."""
        return [self.decode(list(row), skip_special_tokens=skip_special_tokens) for row in ids]


def _check_id(i, size):
    if not isinstance(i, (int, np.integer)) or not 0 <= i < size:
        raise KeyError(f"token id {i!r} is out of range for a vocabulary of size {size}")
    return int(i)


# ----------------------------------------------------------------------------------------------
# characters

class CharTokenizer(Tokenizer):
    """One token per character, as nanoGPT's shakespeare_char: id = index in sorted(set(text)).

    Special tokens, if any, come first (ids 0..k-1) and the characters follow. A character not
    in the vocabulary raises KeyError naming it, unless an ``unk`` token is configured, in which
    case it maps to that token.

    File format (JSON)::

        {"type": "CharTokenizer", "version": 1, "specials": ["<eos>"], "unk": null,
         "chars": ["\\n", " ", "!", ...]}
    """

    def __init__(self, chars, specials=(), unk=None):
        specials = list(specials)
        if unk is not None and unk not in specials:
            specials.append(unk)
        chars = list(chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"chars must be single characters, got {c!r}")
        if len(set(chars)) != len(chars) or len(set(specials)) != len(specials):
            raise ValueError("duplicate characters or special tokens")
        self.specials, self.chars, self.unk = specials, chars, unk
        self.itos = specials + chars                     # id -> token
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("a special token is also one of the characters")
        self.special_tokens = {s: self.stoi[s] for s in specials}
        self._char_ids = {c: self.stoi[c] for c in chars}    # plain characters only
        self._splitter = _special_splitter(specials)

    @classmethod
    def from_text(cls, text, specials=(), unk=None):
        """The vocabulary is every distinct character of ``text``, sorted by code point."""
        return cls(sorted(set(text)), specials=specials, unk=unk)

    @property
    def vocab_size(self):
        return len(self.itos)

    def token_to_id(self, token):
        if token not in self.stoi:
            raise KeyError(f"{token!r} is not in the vocabulary")
        return self.stoi[token]

    def id_to_token(self, i):
        return self.itos[_check_id(i, self.vocab_size)]

    def _char_id(self, ch, pos):
        i = self.stoi.get(ch)
        if i is None or ch in self.special_tokens:      # a 1-char special is only matched whole
            if self.unk is None:
                raise KeyError(f"character {ch!r} (U+{ord(ch):04X}) at position {pos} is not in "
                               f"the vocabulary; build it with from_text on text that contains "
                               f"it, or configure an unk token")
            return self.stoi[self.unk]
        return i

    def encode(self, text, allow_special=True):
        """Ids of ``text``; special tokens in the text are matched whole when allow_special."""
        ids, pos = [], 0
        for piece, is_special in _split_on_specials(text, self._splitter if allow_special
                                                    else None):
            if is_special:
                ids.append(self.special_tokens[piece])
            else:
                n = len(ids)
                try:                                     # fast path: every character known
                    ids.extend(map(self._char_ids.__getitem__, piece))
                except KeyError:                         # unk, or an error naming the position:
                    del ids[n:]                          # redo the piece character by character
                    ids.extend(self._char_id(ch, pos + k) for k, ch in enumerate(piece))
            pos += len(piece)
        return ids

    def tokenize(self, text, allow_special=True):
        return [self.itos[i] for i in self.encode(text, allow_special=allow_special)]

    def decode(self, ids, skip_special_tokens=False):
        out = []
        for i in ids:
            tok = self.id_to_token(i)
            if skip_special_tokens and tok in self.special_tokens:
                continue
            out.append(tok)
        return "".join(out)

    def save(self, path):
        obj = {"type": "CharTokenizer", "version": FORMAT_VERSION, "specials": self.specials,
               "unk": self.unk, "chars": self.chars}
        _atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=1) + "\n")

    @classmethod
    def load(cls, path):
        obj = _read_json(path, "CharTokenizer")
        chars = _require(obj, path, "chars", list)
        specials = _require(obj, path, "specials", list)
        unk = obj.get("unk")
        try:
            return cls(chars, specials=specials, unk=unk)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e


# ----------------------------------------------------------------------------------------------
# byte-level BPE

# GPT-2's pre-tokenizer (needs the third-party `regex` module for \p{L} letters and \p{N} numbers):
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# The same with the standard `re` module. [^\W\d_] is "word character, not a decimal digit, not
# underscore": every \p{L} letter, but also the numeric characters that are not decimal digits
# (categories Nl/No: "²", "½", "Ⅻ"), which GPT-2 counts as \p{N}. So "x²" is one pre-token here
# and two in GPT-2. \d is the decimal digits (Nd), and (?:[^\s\w]|_) is "neither space, letter
# nor number". Also, `re`'s \s includes the separators U+001C..U+001F, which \p{White_Space}
# lacks, and characters newer than Python's Unicode database (category Cn to `unicodedata`) may
# be letters to `regex`. Outside those the two cut text identically (tested against `regex`).
# The split only decides where merges may happen: any pattern round-trips text exactly.
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""


def bytes_to_unicode():
    """GPT-2's byte -> printable character table, so tokens and merges can be written as text.

    The 188 bytes that are printable Latin-1 ("!".."~", "¡".."¬", "®".."ÿ") stand for
    themselves; the other 68 (space, control bytes, ...) are shifted to U+0100 and up, in byte
    order. Space becomes "Ġ" (U+0120) and newline "Ċ" (U+010A), as in GPT-2's vocab.json.
    """
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


_BYTE_ENCODER = bytes_to_unicode()                                 # byte -> char
_BYTE_DECODER = {c: b for b, c in _BYTE_ENCODER.items()}           # char -> byte


def _merge_pair(ids, pair, new_id):
    """Replace every non-overlapping occurrence of ``pair`` in ``ids``, left to right."""
    a, b = pair
    out, i, n = [], 0, len(ids)
    while i < n:
        if i < n - 1 and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _word_frequencies(text, pattern, specials):
    """Pre-token -> count, each pre-token as a tuple of its UTF-8 bytes. Specials are cut out."""
    compiled = re.compile(pattern)
    counts = Counter()
    for piece, is_special in _split_on_specials(text, _special_splitter(specials)):
        if not is_special:
            counts.update(compiled.findall(piece))
    return {tuple(w.encode("utf-8")): c for w, c in counts.items()}


def train_bpe_reference(word_freqs, num_merges, min_frequency=2):
    """The textbook BPE trainer (Sennrich et al. 2016), written to be read, not to be fast.

    word_freqs: {tuple of byte ids: count}. Returns the merges as a list of id pairs; merge r
    creates token id 256 + r. Each round:
      1. count every adjacent pair over the word-frequency table (a word seen 5 times adds 5);
      2. take the most frequent pair; ties go to the smallest pair of ids (a, b), so training
         is deterministic;
      3. stop if it occurs fewer than ``min_frequency`` times, else replace it everywhere by the
         new token.
    Cost: every round rescans every distinct word, O(num_merges * total word length).
    """
    words = [(list(w), f) for w, f in word_freqs.items()]
    merges = []
    for r in range(num_merges):
        counts = Counter()
        for w, f in words:
            for pair in zip(w, w[1:]):
                counts[pair] += f
        if not counts:
            break                                    # every word is a single token already
        best = min(counts, key=lambda p: (-counts[p], p))   # most frequent, then smallest
        if counts[best] < min_frequency:
            break
        merges.append(best)
        words = [(_merge_pair(w, best, 256 + r), f) for w, f in words]
    return merges


def train_bpe_fast(word_freqs, num_merges, min_frequency=2):
    """Same merges as ``train_bpe_reference``, without rescanning the corpus every round.

    Three structures stay up to date as merges happen:
      pair_counts  pair -> total count over the corpus
      where        pair -> indices of the words that contain it (may hold stale extras: a word
                   listed for a pair it lost is simply left unchanged when that pair merges)
      heap         (-count, pair) entries; an entry is stale when its count differs from
                   pair_counts, and is skipped when popped. The heap order (-count, pair) is the
                   reference's choice rule (most frequent, then smallest pair).
    Merging a pair touches only the words that contain it: their old pairs are uncounted, the
    word is rewritten, its new pairs counted, and every pair whose count changed is pushed again.
    """
    words = [list(w) for w in word_freqs]
    freqs = list(word_freqs.values())
    pair_counts = defaultdict(int)
    where = defaultdict(set)
    for i, w in enumerate(words):
        for pair in zip(w, w[1:]):
            pair_counts[pair] += freqs[i]
            where[pair].add(i)
    heap = [(-c, p) for p, c in pair_counts.items()]
    heapq.heapify(heap)

    merges = []
    while len(merges) < num_merges and heap:
        neg_count, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if count != -neg_count:
            continue                                 # stale entry: the count has moved since
        if count < min_frequency:
            break
        new_id = 256 + len(merges)
        merges.append(pair)
        changed = set()
        for i in where.pop(pair):
            w, f = words[i], freqs[i]
            new_w = _merge_pair(w, pair, new_id)
            if len(new_w) == len(w):
                continue                             # stale index entry: pair no longer here
            for p in zip(w, w[1:]):
                pair_counts[p] -= f
                changed.add(p)
            for p in zip(new_w, new_w[1:]):
                pair_counts[p] += f
                changed.add(p)
                where[p].add(i)
            words[i] = new_w
        for p in changed:
            c = pair_counts[p]
            if c > 0:
                heapq.heappush(heap, (-c, p))
            else:
                del pair_counts[p]                   # includes the merged pair itself (now 0)
                where.pop(p, None)
    return merges


class ByteBPETokenizer(Tokenizer):
    """GPT-2-style byte-level BPE: any string round-trips exactly, decode(encode(s)) == s.

    Text is cut around special tokens, then pre-tokenized with ``PATTERN`` (words with their
    leading space, numbers, punctuation runs, whitespace), each pre-token is turned into its UTF-8
    bytes, and the learned merges are applied inside it, lowest rank first. Ids:

        0..255                 the 256 bytes (id = byte value)
        256..256+M-1           merge r makes id 256 + r
        256+M..                the special tokens, in the order given

    File format (JSON; tokens are written with GPT-2's byte -> printable table, so " the" reads
    "Ġthe")::

        {"type": "ByteBPETokenizer", "version": 1,
         "pattern": "'s|'t|...",                      # the pre-tokenizer regex (`re` syntax)
         "specials": {"<eos>": 263},
         "merges": ["e s", "es t", "Ġ l", ...],       # rank order, like GPT-2's merges.txt
         "vocab": {"!": 33, ..., "est": 257, ...}}    # like encoder.json; checked on load
    """

    def __init__(self, merges, specials=(), pattern=PATTERN):
        self.merges = [tuple(int(x) for x in m) for m in merges]     # rank -> (a, b)
        self.pattern = pattern
        self._regex = re.compile(pattern)
        # id -> bytes; a merged token's bytes are its two parts' bytes joined
        self.vocab = [bytes([b]) for b in range(256)]
        self._ranks = {}                                              # (a, b) -> new id
        for r, (a, b) in enumerate(self.merges):
            new_id = 256 + r
            if not (0 <= a < new_id and 0 <= b < new_id):
                raise ValueError(f"merge {r} {(a, b)} uses an id not yet defined")
            if (a, b) in self._ranks:
                raise ValueError(f"merge {r} {(a, b)} is listed twice")
            self._ranks[(a, b)] = new_id
            self.vocab.append(self.vocab[a] + self.vocab[b])
        specials = list(specials)
        if len(set(specials)) != len(specials) or any(not s for s in specials):
            raise ValueError(f"special tokens must be distinct non-empty strings: {specials}")
        self.special_tokens = {s: len(self.vocab) + k for k, s in enumerate(specials)}
        self._special_by_id = {i: s for s, i in self.special_tokens.items()}
        self._splitter = _special_splitter(specials)
        self._cache = {}                                              # pre-token -> ids

    # -- training ----------------------------------------------------------------------------

    @classmethod
    def train(cls, text, vocab_size, specials=(), min_frequency=2, trainer="auto",
              pattern=PATTERN):
        """Learn ``vocab_size - 256 - len(specials)`` merges from ``text``.

        trainer: "reference" (readable, rescans every round), "fast" (incremental counts and a
        heap; identical merges), or "auto": fast above 100k characters. Training stops early
        when no pair occurs ``min_frequency`` times, so the vocabulary can come out smaller.
        Special tokens in ``text`` are cut out and never merged with their neighbours.
        """
        num_merges = vocab_size - 256 - len(specials)
        if num_merges < 0:
            raise ValueError(f"vocab_size={vocab_size} is smaller than the 256 byte tokens plus "
                             f"{len(specials)} special tokens")
        if trainer == "auto":
            trainer = "fast" if len(text) > 100_000 else "reference"
        fns = {"reference": train_bpe_reference, "fast": train_bpe_fast}
        if trainer not in fns:
            raise ValueError(f"trainer must be 'auto', 'reference' or 'fast', got {trainer!r}")
        word_freqs = _word_frequencies(text, pattern, specials)
        merges = fns[trainer](word_freqs, num_merges, min_frequency)
        return cls(merges, specials=specials, pattern=pattern)

    # -- vocabulary --------------------------------------------------------------------------

    @property
    def vocab_size(self):
        return len(self.vocab) + len(self.special_tokens)

    def _token_str(self, i):
        """Readable form of a token: a special as itself, else its bytes via GPT-2's table."""
        if i in self._special_by_id:
            return self._special_by_id[i]
        return "".join(_BYTE_ENCODER[b] for b in self.vocab[i])

    def id_to_token(self, i):
        return self._token_str(_check_id(i, self.vocab_size))

    def token_to_id(self, token):
        if token in self.special_tokens:
            return self.special_tokens[token]
        if not hasattr(self, "_str_to_id"):
            self._str_to_id = {self._token_str(i): i for i in range(len(self.vocab))}
        if token not in self._str_to_id:
            raise KeyError(f"{token!r} is not in the vocabulary (tokens are written in GPT-2's "
                           f"byte alphabet: ' the' is 'Ġthe')")
        return self._str_to_id[token]

    # -- encoding ----------------------------------------------------------------------------

    def _bpe(self, word):
        """Ids of one pre-token: its bytes, then merges applied lowest rank first."""
        if word in self._cache:
            return self._cache[word]
        ids = list(word.encode("utf-8"))
        while len(ids) >= 2:
            # the adjacent pair that was learned earliest (smallest new id); unknown pairs never
            pair = min(zip(ids, ids[1:]), key=lambda p: self._ranks.get(p, float("inf")))
            if pair not in self._ranks:
                break
            ids = _merge_pair(ids, pair, self._ranks[pair])
        if len(self._cache) < 100_000:
            self._cache[word] = ids
        return ids

    def encode(self, text, allow_special=True):
        """Ids of ``text``. With ``allow_special`` a special token written in the text ("<eos>")
        becomes its id; without, it is encoded as ordinary text."""
        ids = []
        for piece, is_special in _split_on_specials(text, self._splitter if allow_special
                                                    else None):
            if is_special:
                ids.append(self.special_tokens[piece])
            else:
                for word in self._regex.findall(piece):
                    ids.extend(self._bpe(word))
        return ids

    def tokenize(self, text, allow_special=True):
        """The pieces as readable strings in GPT-2's byte alphabet (" lowest" -> "Ġlow", "est")."""
        return [self._token_str(i) for i in self.encode(text, allow_special=allow_special)]

    def decode(self, ids, skip_special_tokens=False, errors="replace"):
        """Join the tokens' bytes and decode UTF-8. Ids cut mid-character (as a sampled model can
        produce) decode to U+FFFD with the default ``errors="replace"``."""
        out = bytearray()
        for i in ids:
            i = _check_id(i, self.vocab_size)
            if i in self._special_by_id:
                if not skip_special_tokens:
                    out += self._special_by_id[i].encode("utf-8")
            else:
                out += self.vocab[i]
        return out.decode("utf-8", errors=errors)

    # -- files -------------------------------------------------------------------------------

    def save(self, path):
        merges = [self._token_str(a) + " " + self._token_str(b) for a, b in self.merges]
        vocab = {self._token_str(i): i for i in range(len(self.vocab))}
        obj = {"type": "ByteBPETokenizer", "version": FORMAT_VERSION, "pattern": self.pattern,
               "specials": self.special_tokens, "merges": merges, "vocab": vocab}
        if len(vocab) != len(self.vocab):
            # two merges made the same byte string (possible in principle, not seen in practice):
            # the strings alone would be ambiguous, so also write the merges as id pairs
            obj["merge_ids"] = [list(m) for m in self.merges]
        _atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=1) + "\n")

    @classmethod
    def load(cls, path):
        obj = _read_json(path, "ByteBPETokenizer")
        pattern = _require(obj, path, "pattern", str)
        specials = _require(obj, path, "specials", dict)
        merge_lines = _require(obj, path, "merges", list)
        # rebuild ids from the merge strings: bytes first, then one new token per merge
        str_to_id = {_BYTE_ENCODER[b]: b for b in range(256)}
        merges = []
        for r, line in enumerate(merge_lines):
            parts = line.split(" ") if isinstance(line, str) else []
            if len(parts) != 2 or parts[0] not in str_to_id or parts[1] not in str_to_id:
                raise ValueError(f"{path}: merge {r} {line!r} is not two known tokens "
                                 f"separated by one space")
            merges.append((str_to_id[parts[0]], str_to_id[parts[1]]))
            str_to_id.setdefault(parts[0] + parts[1], 256 + r)
        if "merge_ids" in obj:
            merges = [tuple(m) for m in _require(obj, path, "merge_ids", list)]
            if len(merges) != len(merge_lines):
                raise ValueError(f"{path}: \"merge_ids\" and \"merges\" differ in length")
        order = sorted(specials, key=specials.get)
        expected = list(range(256 + len(merges), 256 + len(merges) + len(order)))
        if [specials[s] for s in order] != expected:
            raise ValueError(f"{path}: special token ids {specials} should be {expected}")
        try:
            tok = cls(merges, specials=order, pattern=pattern)
        except (ValueError, TypeError, re.error) as e:
            raise ValueError(f"{path}: {e}") from e
        if "vocab" in obj and "merge_ids" not in obj:   # for readers; must agree if there
            vocab = {tok._token_str(i): i for i in range(len(tok.vocab))}
            if obj["vocab"] != vocab:
                raise ValueError(f"{path}: \"vocab\" disagrees with the ids implied by "
                                 f"\"merges\" (was the file edited by hand?)")
        return tok


# ----------------------------------------------------------------------------------------------
# WordPiece (BERT)

def _is_whitespace(ch):
    # \t \n \r are control characters in Unicode but BERT treats them as whitespace
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch):
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_punctuation(ch):
    # BERT counts every non-letter, non-digit ASCII character as punctuation ("$", "^", "`" are
    # Unicode symbols, not P*), plus all of Unicode's P* categories
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(ch):
    """CJK Unified Ideographs (not Hangul, Hiragana or Katakana), as in BERT."""
    cp = ord(ch)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


_ASCII_WORDS = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9 \t\n\r]")
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f]")   # dropped by BERT


class WordPieceTokenizer(Tokenizer):
    """BERT's tokenizer: basic tokenization, then greedy longest-match-first WordPiece.

    Basic tokenization (BERT's ``BasicTokenizer``):
      1. drop NUL, U+FFFD and control characters; every whitespace character becomes " ";
      2. put spaces around CJK ideographs, so each is its own word; NFC-normalize;
      3. split on whitespace; if ``lowercase``: lower-case and strip accents (NFD, drop Mn marks);
      4. split every punctuation character off as its own word.
    WordPiece: each word is cut into the longest vocabulary entry from its start, then the longest
    "##"-prefixed entry from where that ended, and so on ("unaffable" -> "un", "##aff", "##able").
    A word with a piece that matches nothing, or longer than ``max_input_chars_per_word``, becomes
    one [UNK]. Special tokens written in the text ("[MASK]") are kept whole, case-sensitively.

    The vocabulary is a BERT ``vocab.txt`` (one token per line, id = line number from 0).
    ``save`` writes JSON: {"type": "WordPieceTokenizer", "version": 1, "lowercase": true, ...,
    "vocab": ["[PAD]", ...]}; ``save_vocab_txt`` writes a plain vocab.txt.
    """

    SPECIALS = (PAD, UNK, CLS, SEP, MASK)

    def __init__(self, vocab, lowercase=True, strip_accents=None, tokenize_chinese_chars=True,
                 max_input_chars_per_word=100):
        vocab = list(vocab)
        self.itos = vocab
        self.stoi = {}
        for i, tok in enumerate(vocab):
            if tok in self.stoi:
                raise ValueError(f"token {tok!r} appears twice (ids {self.stoi[tok]} and {i})")
            self.stoi[tok] = i
        if UNK not in self.stoi:
            raise ValueError(f"the vocabulary has no {UNK} token")
        self.lowercase = lowercase
        self.strip_accents = lowercase if strip_accents is None else strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.max_input_chars_per_word = max_input_chars_per_word
        self.special_tokens = {s: self.stoi[s] for s in self.SPECIALS if s in self.stoi}
        self._special_by_id = {i: s for s, i in self.special_tokens.items()}
        self._splitter = _special_splitter(list(self.special_tokens))

    @classmethod
    def from_vocab_file(cls, path, lowercase=True, **kwargs):
        """Load a BERT vocab.txt; ``lowercase`` must match the model (True for *-uncased)."""
        with open(path, encoding="utf-8") as f:
            vocab = [line.rstrip("\n").rstrip("\r") for line in f]
        if vocab and vocab[-1] == "":
            vocab.pop()                              # a trailing blank line is not a token
        try:
            return cls(vocab, lowercase=lowercase, **kwargs)
        except ValueError as e:
            raise ValueError(f"{os.fspath(path)}: {e}") from e

    @classmethod
    def from_corpus(cls, texts, vocab_size=8000, min_frequency=2, lowercase=True):
        """A vocabulary counted from ``texts``, for a small BERT trained from scratch.

        Not Google's WordPiece training (which adds the pieces that most raise the corpus
        likelihood): the five special tokens, then every character of the texts both as a word
        start and as a "##" continuation (so every word of these texts can be spelled and none
        becomes [UNK]), then whole words by frequency (at least ``min_frequency``
        occurrences), most frequent first, up to ``vocab_size`` entries. A rarer word is then
        spelled as its longest known prefix word, then characters.
        """
        probe = cls(list(cls.SPECIALS), lowercase=lowercase)
        counts = Counter(w for t in texts for w in probe.basic_tokenize(t))
        chars = sorted({c for w in counts for c in w})
        vocab = list(cls.SPECIALS) + chars + ["##" + c for c in chars]
        if len(vocab) > vocab_size:
            raise ValueError(f"WordPieceTokenizer.from_corpus: vocab_size {vocab_size} cannot "
                             f"hold the {len(vocab)} special tokens and characters")
        words = sorted((w for w, n in counts.items() if n >= min_frequency and len(w) > 1),
                       key=lambda w: (-counts[w], w))
        vocab += words[:vocab_size - len(vocab)]
        return cls(vocab, lowercase=lowercase)

    @property
    def vocab_size(self):
        return len(self.itos)

    def token_to_id(self, token):
        if token not in self.stoi:
            raise KeyError(f"{token!r} is not in the vocabulary")
        return self.stoi[token]

    def id_to_token(self, i):
        return self.itos[_check_id(i, self.vocab_size)]

    # -- tokenization ------------------------------------------------------------------------

    def basic_tokenize(self, text):
        """Steps 1-4 above: text -> words and punctuation marks."""
        if text.isascii() and not _ASCII_CONTROL.search(text):
            # the same four steps for printable ASCII, as one regular expression: no CJK, no
            # accents, NFC changes nothing, and every ASCII character that is neither a letter,
            # a digit nor whitespace is punctuation to BERT
            words = _ASCII_WORDS.findall(text)
            return [w.lower() for w in words] if self.lowercase else words
        chars = []
        for ch in text:
            if ch == "\x00" or ch == "\ufffd" or _is_control(ch):
                continue
            if _is_whitespace(ch):
                chars.append(" ")
            elif self.tokenize_chinese_chars and _is_cjk(ch):
                chars.append(" " + ch + " ")
            else:
                chars.append(ch)
        text = unicodedata.normalize("NFC", "".join(chars))
        words = []
        for word in text.split():
            if self.lowercase:
                word = word.lower()
            if self.strip_accents:
                word = "".join(c for c in unicodedata.normalize("NFD", word)
                               if unicodedata.category(c) != "Mn")
            current = ""
            for ch in word:
                if _is_punctuation(ch):
                    if current:
                        words.append(current)
                    words.append(ch)
                    current = ""
                else:
                    current += ch
            if current:
                words.append(current)
        return words

    def wordpiece(self, word):
        """Greedy longest-match-first pieces of one word, or [UNK] if it cannot be covered."""
        if len(word) > self.max_input_chars_per_word:
            return [UNK]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.stoi:
                    break
                end -= 1
            else:
                return [UNK]                         # no prefix of the rest is in the vocab
            pieces.append(piece)
            start = end
        return pieces

    def tokenize(self, text, allow_special=True):
        """The WordPiece strings of ``text``, without [CLS]/[SEP]."""
        tokens = []
        for piece, is_special in _split_on_specials(text, self._splitter if allow_special
                                                    else None):
            if is_special:
                tokens.append(piece)
            else:
                for word in self.basic_tokenize(piece):
                    tokens.extend(self.wordpiece(word))
        return tokens

    def _special(self, token):
        if token not in self.special_tokens:
            raise ValueError(f"this vocabulary has no {token} token")
        return self.special_tokens[token]

    def encode(self, text, add_special_tokens=True, allow_special=True):
        """[CLS] text [SEP] as ids (without the two when ``add_special_tokens=False``)."""
        ids = [self.stoi[t] for t in self.tokenize(text, allow_special=allow_special)]
        if add_special_tokens:
            ids = [self._special(CLS)] + ids + [self._special(SEP)]
        return ids

    def encode_pair(self, text_a, text_b, allow_special=True):
        """[CLS] a [SEP] b [SEP] as (ids, token_type_ids): type 0 up to the first [SEP], then 1."""
        a = self.encode(text_a, add_special_tokens=False, allow_special=allow_special)
        b = self.encode(text_b, add_special_tokens=False, allow_special=allow_special)
        cls_id, sep_id = self._special(CLS), self._special(SEP)
        ids = [cls_id] + a + [sep_id] + b + [sep_id]
        token_type_ids = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        return ids, token_type_ids

    def _encode_truncated(self, text, max_len, add_special_tokens=True, **kwargs):
        # truncate the text's pieces, not [SEP]: BERT inputs always end with [SEP]
        ids = self.encode(text, add_special_tokens=False, **kwargs)
        if not add_special_tokens:
            return ids if max_len is None else ids[:max_len]
        if max_len is not None:
            if max_len < 2:
                raise ValueError("max_len must leave room for [CLS] and [SEP]")
            ids = ids[:max_len - 2]
        return [self._special(CLS)] + ids + [self._special(SEP)]

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=False):
        """Tokens joined by spaces with "##" pieces glued to the previous one (as BERT): the
        lower-casing, accent stripping and spacing of the input are not recoverable.
        ``clean_up_tokenization_spaces`` also removes the space before . ? ! , and around
        English contractions ("don ' t" -> "don't"), as Hugging Face does."""
        tokens = []
        for i in ids:
            i = _check_id(i, self.vocab_size)
            if skip_special_tokens and i in self._special_by_id:
                continue
            tokens.append(self.itos[i])
        text = " ".join(tokens).replace(" ##", "").strip()
        if clean_up_tokenization_spaces:
            for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","),
                                  (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"),
                                  (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(before, after)
        return text

    # -- files -------------------------------------------------------------------------------

    def save(self, path):
        obj = {"type": "WordPieceTokenizer", "version": FORMAT_VERSION,
               "lowercase": self.lowercase, "strip_accents": self.strip_accents,
               "tokenize_chinese_chars": self.tokenize_chinese_chars,
               "max_input_chars_per_word": self.max_input_chars_per_word, "vocab": self.itos}
        _atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=1) + "\n")

    def save_vocab_txt(self, path):
        """Write a BERT-style vocab.txt (one token per line) readable by ``from_vocab_file``."""
        _atomic_write_text(path, "".join(t + "\n" for t in self.itos))

    @classmethod
    def load(cls, path):
        obj = _read_json(path, "WordPieceTokenizer")
        vocab = _require(obj, path, "vocab", list)
        try:
            return cls(vocab, lowercase=bool(obj.get("lowercase", True)),
                       strip_accents=obj.get("strip_accents"),
                       tokenize_chinese_chars=bool(obj.get("tokenize_chinese_chars", True)),
                       max_input_chars_per_word=int(obj.get("max_input_chars_per_word", 100)))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e


# ----------------------------------------------------------------------------------------------

_CLASSES = {c.__name__: c for c in (CharTokenizer, ByteBPETokenizer, WordPieceTokenizer)}


def load_tokenizer(path):
    """Load any tokenizer saved by ``save``; the file's "type" field picks the class."""
    obj = _read_json(path, None)
    if obj["type"] not in _CLASSES:
        raise ValueError(f"{os.fspath(path)}: unknown tokenizer type {obj['type']!r}; "
                         f"expected one of {sorted(_CLASSES)}")
    return _CLASSES[obj["type"]].load(path)
