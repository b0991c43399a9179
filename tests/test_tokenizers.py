"""Tokenizers: round trips, BPE trainers (reference == fast), WordPiece vs BERT, specials, files."""
import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyllm.data import (CLS, EOS, MASK, PAD, SEP, UNK, ByteBPETokenizer, CharTokenizer,
                          WordPieceTokenizer, bytes_to_unicode, load_tokenizer)
from tinyllm.data.tokenizers import (GPT2_PATTERN, PATTERN, _word_frequencies, train_bpe_fast,
                                     train_bpe_reference)

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

SAMPLE = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
          "It's 2024 -- naïve café, déjà vu; emoji 🙂🚀 and CJK 你好世界\ttabs\r\n"
          "    indented   spaces  and 123456 numbers, x_y snake_case, don't won't we'll.\n") * 3


def _shakespeare():
    """Tiny Shakespeare from $TINYLLM_DATA or /work/shared/data, or None."""
    for folder in (os.environ.get("TINYLLM_DATA"), "/work/shared/data"):
        if folder and (Path(folder) / "tinyshakespeare.txt").is_file():
            return (Path(folder) / "tinyshakespeare.txt").read_text(encoding="utf-8")
    return None


@pytest.fixture(scope="module")
def bpe():
    return ByteBPETokenizer.train(SAMPLE, vocab_size=256 + 60 + 2, specials=("<bos>", EOS))


# ----------------------------------------------------------------------------------------------
# CharTokenizer

def test_char_matches_nanogpt_shakespeare_char():
    text = "hello world\n"
    tok = CharTokenizer.from_text(text)
    chars = sorted(set(text))                            # nanoGPT: stoi = {ch: i for i, ch in ...}
    assert tok.vocab_size == len(chars) == 9
    assert tok.encode("hello") == [chars.index(c) for c in "hello"] == [4, 3, 5, 5, 6]
    assert tok.decode(tok.encode(text)) == text
    assert tok.token_to_id("\n") == 0 and tok.id_to_token(1) == " "


def test_char_specials_first_and_never_split():
    tok = CharTokenizer.from_text("ab<", specials=(PAD, EOS))
    assert tok.pad_id == 0 and tok.eos_id == 1 and tok.vocab_size == 5
    assert tok.encode("ab<eos>a") == [3, 4, 1, 3]
    assert tok.encode("<<eos>") == [2, 1]
    assert tok.decode([3, 1, 0], skip_special_tokens=True) == "a"
    assert tok.decode([3, 1, 0]) == "a<eos>[PAD]"
    with pytest.raises(KeyError, match="'e'"):           # without allow_special it is plain text
        tok.encode("<eos>", allow_special=False)


def test_char_unknown_character_error_names_it():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(KeyError, match=r"'é' \(U\+00E9\) at position 2"):
        tok.encode("abé")
    tok = CharTokenizer.from_text("abc", unk=UNK)
    assert tok.unk_id == 0 and tok.encode("aéb") == [1, 0, 2]
    with pytest.raises(KeyError, match="out of range"):
        tok.decode([99])


@SETTINGS
@given(st.data())
def test_char_round_trip_property(data):
    alphabet = data.draw(st.text(min_size=1))
    tok = CharTokenizer.from_text(alphabet)
    text = data.draw(st.text(alphabet=sorted(set(alphabet))))
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) == len(text)


# ----------------------------------------------------------------------------------------------
# ByteBPE: pre-tokenizer and byte table

def test_bytes_to_unicode_is_gpt2s_table():
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("a")] == "a"
    assert all(c.isprintable() and not c.isspace() for c in table.values())


def test_pretokenizer_splits_like_gpt2():
    import re
    assert re.findall(PATTERN, "Hello world's  123abc!!\n\n x_y") == [
        "Hello", " world", "'s", " ", " 123", "abc", "!!", "\n\n", " x", "_", "y"]


_GPT2_COMPARABLE = st.characters(blacklist_categories=("Cs", "Cn", "Nl", "No"),
                                 blacklist_characters="\x1c\x1d\x1e\x1f")


@SETTINGS
@given(st.text(alphabet=_GPT2_COMPARABLE) | st.text(alphabet="ab1 '_.\n\t\u00a0é²"))
def test_pretokenizer_agrees_with_gpt2_regex(text):
    """Our `re` pattern cuts like GPT-2's \\p{L}/\\p{N} pattern, except for the documented
    characters (Nl/No numbers, U+001C..1F, code points unassigned in Python's database)."""
    regex = pytest.importorskip("regex")
    import re
    if any(unicodedata.category(c) in ("No", "Nl") for c in text):
        return                                     # the documented difference ("²")
    assert re.findall(PATTERN, text) == regex.findall(GPT2_PATTERN, text)


# ----------------------------------------------------------------------------------------------
# ByteBPE: training

def test_bpe_learns_the_paper_merges():
    # Sennrich et al.'s toy corpus: low x5, lower x2, newest x6, widest x3, each with its space
    words = ["low"] * 5 + ["lower"] * 2 + ["newest"] * 6 + ["widest"] * 3
    text = "".join(" " + w for w in words)
    for trainer in ("reference", "fast"):
        tok = ByteBPETokenizer.train(text, vocab_size=256 + 9, trainer=trainer)
        merges = [tok.id_to_token(a) + " " + tok.id_to_token(b) for a, b in tok.merges]
        # "es" and "st" both occur 9 times: the tie goes to the smaller id pair (e, s)
        assert merges == ["e s", "es t", "Ġ l", "o w", "Ġl ow", "Ġ n", "e w", "Ġn ew",
                          "Ġnew est"]
        assert tok.tokenize(" lowest newest") == ["Ġlow", "est", "Ġnewest"]
        assert tok.vocab_size == 265


def test_min_frequency_stops_training():
    def merges(tok):
        return [tok.id_to_token(a) + " " + tok.id_to_token(b) for a, b in tok.merges]

    # pre-tokens "ab", " ab", " ab", " cd": once "Ġab" is made every other pair occurs once
    tok = ByteBPETokenizer.train("ab ab ab cd", vocab_size=300, min_frequency=2)
    assert merges(tok) == ["a b", "Ġ ab"] and tok.vocab_size == 258
    tok = ByteBPETokenizer.train("ab ab ab cd", vocab_size=300, min_frequency=1)
    assert merges(tok) == ["a b", "Ġ ab", "Ġ c", "Ġc d"]


def test_vocab_size_too_small_raises():
    with pytest.raises(ValueError, match="256 byte tokens"):
        ByteBPETokenizer.train("abc", vocab_size=257, specials=("<a>", "<b>"))
    with pytest.raises(ValueError, match="trainer"):
        ByteBPETokenizer.train("abc", vocab_size=300, trainer="quick")


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.lists(st.sampled_from(b"abc"), min_size=1, max_size=12).map(tuple),
                       st.integers(1, 6), max_size=12),
       st.integers(1, 3))
def test_fast_trainer_equals_reference_on_random_words(word_freqs, min_frequency):
    # a 3-letter alphabet forces long repeats ("aaaa"), overlapping pairs and many count ties
    assert (train_bpe_fast(word_freqs, 60, min_frequency)
            == train_bpe_reference(word_freqs, 60, min_frequency))


@pytest.mark.parametrize("corpus", ["sample", "shakespeare"])
def test_fast_trainer_equals_reference_on_text(corpus):
    if corpus == "shakespeare":
        text = _shakespeare()
        if text is None:
            pytest.skip("tinyshakespeare.txt not found in $TINYLLM_DATA or /work/shared/data")
        text = text[:60_000]
    else:
        text = SAMPLE
    word_freqs = _word_frequencies(text, PATTERN, ())
    fast = train_bpe_fast(word_freqs, 150, 2)
    assert fast == train_bpe_reference(word_freqs, 150, 2)
    assert len(fast) > 50


# ----------------------------------------------------------------------------------------------
# ByteBPE: encoding

@SETTINGS
@given(st.text())
def test_bpe_round_trips_any_text(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text
    assert bpe.decode(bpe.encode(text, allow_special=False)) == text


def test_bpe_round_trips_tricky_text_and_compresses(bpe):
    for text in [SAMPLE, "", " ", "\n\n\n", "🙂" * 5, "a\x00b\x1cc", "\ud7ff\ue000\U0010ffff"]:
        assert bpe.decode(bpe.encode(text)) == text
    assert len(bpe.encode(SAMPLE)) < 0.65 * len(SAMPLE.encode("utf-8"))      # 438 of 717


def test_bpe_encode_matches_training_segmentation(bpe):
    # applying the merges by rank inside each word gives the words as training left them
    from tinyllm.data.tokenizers import _merge_pair
    for word in set(__import__("re").findall(PATTERN, SAMPLE)):
        ids = list(word.encode("utf-8"))
        for r, pair in enumerate(bpe.merges):          # training order, every word in turn
            ids = _merge_pair(ids, pair, 256 + r)
        assert bpe.encode(word) == ids


def test_bpe_specials(bpe):
    bos, eos = bpe.bos_id, bpe.eos_id
    assert (bos, eos) == (256 + 60, 256 + 61) and bpe.special_tokens == {"<bos>": bos, EOS: eos}
    ids = bpe.encode("<bos>Speak<eos>speak")
    assert ids[0] == bos and eos in ids and ids.count(eos) == 1
    assert bpe.decode(ids) == "<bos>Speak<eos>speak"
    assert bpe.decode(ids, skip_special_tokens=True) == "Speakspeak"
    plain = bpe.encode("<eos>", allow_special=False)
    assert eos not in plain and bpe.decode(plain) == "<eos>"
    assert bpe.token_to_id(EOS) == eos and bpe.id_to_token(eos) == EOS


def test_bpe_token_strings_and_errors(bpe):
    assert bpe.id_to_token(ord(" ")) == "Ġ" and bpe.token_to_id("Ġ") == 32
    i = bpe.merges[0]
    assert bpe.token_to_id(bpe.id_to_token(256)) == 256 and len(i) == 2
    with pytest.raises(KeyError, match="Ġthe"):
        bpe.token_to_id("not a token")
    with pytest.raises(KeyError, match="out of range"):
        bpe.decode([bpe.vocab_size])
    assert bpe.decode([0xE4, 0xBD]) == "\ufffd"            # half a character decodes to U+FFFD


# ----------------------------------------------------------------------------------------------
# batching

def test_encode_batch_pads_and_masks():
    tok = CharTokenizer.from_text("abc", specials=(PAD,))
    ids, mask = tok.encode_batch(["abc", "a", ""])
    assert ids.dtype == np.int64 and mask.dtype == np.int64 and ids.shape == (3, 3)
    np.testing.assert_array_equal(ids, [[1, 2, 3], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    ids, mask = tok.encode_batch(["abcabc", "b"], max_len=4)
    np.testing.assert_array_equal(ids, [[1, 2, 3, 1], [2, 0, 0, 0]])
    np.testing.assert_array_equal(mask.sum(1), [4, 1])
    ids, mask = tok.encode_batch(["ab", "ca"], pad=False)
    assert ids.shape == (2, 2) and mask.all()
    with pytest.raises(ValueError, match="different lengths"):
        tok.encode_batch(["ab", "c"], pad=False)
    with pytest.raises(TypeError):
        tok.encode_batch("abc")
    assert tok.decode_batch(ids) == ["ab", "ca"]


def test_encode_batch_without_pad_token_uses_zero_behind_the_mask(bpe):
    ids, mask = bpe.encode_batch(["Speak, speak.", "All"])
    assert bpe.pad_id is None and ids.shape[0] == 2
    assert (ids[mask == 0] == 0).all() and mask[0].all()
    assert bpe.decode(ids[1][mask[1] == 1].tolist()) == "All"


# ----------------------------------------------------------------------------------------------
# files

def test_save_load_round_trips(tmp_path, bpe):
    char = CharTokenizer.from_text(SAMPLE, specials=(PAD, EOS), unk=UNK)
    for tok in (char, bpe):
        path = tmp_path / (type(tok).__name__ + ".json")
        tok.save(path)
        for loaded in (type(tok).load(path), load_tokenizer(path)):
            assert type(loaded) is type(tok) and loaded.vocab_size == tok.vocab_size
            assert loaded.special_tokens == tok.special_tokens
            assert loaded.encode(SAMPLE + "<eos>") == tok.encode(SAMPLE + "<eos>")
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_bpe_file_is_readable(tmp_path, bpe):
    path = tmp_path / "bpe.json"
    bpe.save(path)
    obj = json.loads(path.read_text(encoding="utf-8"))
    a, b = bpe.merges[0]
    assert obj["merges"][0] == bpe.id_to_token(a) + " " + bpe.id_to_token(b)
    assert obj["vocab"]["Ġ"] == 32 and obj["specials"] == {"<bos>": 316, "<eos>": 317}
    assert obj["pattern"] == PATTERN and "Ġ" in path.read_text(encoding="utf-8")


def test_bad_files_raise_clear_errors(tmp_path, bpe):
    bad = tmp_path / "bad.json"
    bad.write_text("not json", encoding="utf-8")
    with pytest.raises(ValueError, match="invalid JSON"):
        load_tokenizer(bad)
    bad.write_text('{"hello": 1}', encoding="utf-8")
    with pytest.raises(ValueError, match="no \"type\""):
        ByteBPETokenizer.load(bad)
    good = tmp_path / "good.json"
    bpe.save(good)
    with pytest.raises(ValueError, match="holds a 'ByteBPETokenizer', not a 'CharTokenizer'"):
        CharTokenizer.load(good)
    obj = json.loads(good.read_text(encoding="utf-8"))
    for key, value, message in [("version", 99, "format version 99"),
                                ("merges", ["a b", "zz q"], "merge 1 'zz q'"),
                                ("merges", None, "malformed field 'merges'"),
                                ("specials", {"<eos>": 3}, "special token ids"),
                                ("type", "Nope", "unknown tokenizer type")]:
        broken = dict(obj, **{key: value})
        bad.write_text(json.dumps(broken), encoding="utf-8")
        with pytest.raises(ValueError, match=message):
            load_tokenizer(bad)
    edited = dict(obj, vocab=dict(obj["vocab"], **{"Ġ": 33}))
    bad.write_text(json.dumps(edited), encoding="utf-8")
    with pytest.raises(ValueError, match="disagrees"):
        ByteBPETokenizer.load(bad)


def test_data_package_imports_no_autograd():
    # `import tinyllm` itself loads autograd, so load the module file alone and check that it
    # pulls in no tinyllm module at all (stdlib and NumPy only)
    code = ("import importlib.util, sys; "
            "spec = importlib.util.spec_from_file_location('tok', sys.argv[1]); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "print(sorted(k for k in sys.modules if k.startswith('tinyllm')))")
    path = Path(__file__).parent.parent / "tinyllm" / "data" / "tokenizers.py"
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------------------------
# WordPiece

VOCAB = [PAD, UNK, CLS, SEP, MASK, "the", "un", "##aff", "##able", "hello", "world", "!", ",",
         ".", "'", "##s", "a", "##b", "##c", "##a", "cafe", "don", "t", "你", "$", "Hello"]


@pytest.fixture
def vocab_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def wp(vocab_file):
    return WordPieceTokenizer.from_vocab_file(vocab_file)


@pytest.mark.parametrize("text, tokens", [
    ("UnAffable!", ["un", "##aff", "##able", "!"]),            # lower-case, greedy longest match
    ("Hello, WORLD.", ["hello", ",", "world", "."]),           # punctuation split off
    ("Café", ["cafe"]),                                        # accent stripped
    ("don't", ["don", "'", "t"]),
    ("ab abc abca", ["a", "##b", "a", "##b", "##c", "a", "##b", "##c", "##a"]),
    ("xyz abx", [UNK, UNK]),                                   # a piece that matches nothing
    ("你好", ["你", UNK]),                                       # CJK: one word per character
    ("\x00hel\x07lo\u00a0the", ["hello", "the"]),              # control chars dropped
    ("a" * 100 + " " + "a" * 101, ["a"] + ["##a"] * 99 + [UNK]),   # > 100 chars -> [UNK]
    ("$a", ["$", "a"]),                                        # ASCII symbol counts as punct.
    ("[MASK] the [mask]", [MASK, "the", UNK, UNK, UNK]),       # specials are case-sensitive
    ("", []),
])
def test_wordpiece_hand_examples(wp, text, tokens):
    assert wp.tokenize(text) == tokens
    assert wp.encode(text) == [wp.cls_id] + [VOCAB.index(t) for t in tokens] + [wp.sep_id]


def test_wordpiece_cased_pair_and_decode(vocab_file):
    cased = WordPieceTokenizer.from_vocab_file(vocab_file, lowercase=False)
    assert cased.tokenize("Hello hello Café") == ["Hello", "hello", UNK]
    wp = WordPieceTokenizer.from_vocab_file(vocab_file)
    ids, types = wp.encode_pair("hello world", "the a")
    assert ids == [2, 9, 10, 3, 5, 16, 3] and types == [0, 0, 0, 0, 1, 1, 1]
    ids = wp.encode("Un affable, abca!")
    assert wp.decode(ids) == "[CLS] un [UNK] , abca ! [SEP]"
    assert wp.decode(ids, skip_special_tokens=True) == "un , abca !"      # [UNK] is special too
    assert wp.decode(ids, clean_up_tokenization_spaces=True) == "[CLS] un [UNK], abca! [SEP]"
    assert (wp.pad_id, wp.unk_id, wp.cls_id, wp.sep_id, wp.mask_id) == (0, 1, 2, 3, 4)
    assert wp.vocab_size == len(VOCAB) and wp.token_to_id("##aff") == 7


def test_wordpiece_batch_truncation_keeps_sep(wp):
    ids, mask = wp.encode_batch(["hello world the a", "the"], max_len=4)
    np.testing.assert_array_equal(ids, [[2, 9, 10, 3], [2, 5, 3, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1], [1, 1, 1, 0]])


def test_wordpiece_files(tmp_path, vocab_file):
    wp = WordPieceTokenizer.from_vocab_file(vocab_file, lowercase=False)
    wp.save(tmp_path / "wp.json")
    loaded = load_tokenizer(tmp_path / "wp.json")
    assert loaded.lowercase is False and loaded.encode("Hello a") == wp.encode("Hello a")
    wp.save_vocab_txt(tmp_path / "v2.txt")
    assert (tmp_path / "v2.txt").read_text(encoding="utf-8") == vocab_file.read_text("utf-8")
    (tmp_path / "nounk.txt").write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"nounk.txt: the vocabulary has no \[UNK\]"):
        WordPieceTokenizer.from_vocab_file(tmp_path / "nounk.txt")
    (tmp_path / "dup.txt").write_text("[UNK]\na\na\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"'a' appears twice \(ids 1 and 2\)"):
        WordPieceTokenizer.from_vocab_file(tmp_path / "dup.txt")
    nosep = WordPieceTokenizer([UNK, "a"])
    assert nosep.encode("a", add_special_tokens=False) == [1]
    with pytest.raises(ValueError, match=r"no \[CLS\] token"):
        nosep.encode("a")


TRICKY = ["UnAffable!", "Hello, WORLD.", "Café don't", "[MASK] hello [CLS]x", "你好 a",
          "ab abc\tabca", "a" * 101, "\x00hel\x07lo", "héllo wörld", "[mask] the", "  ", "",
          "a$b^c`d", "the\u00a0the\u2003the", "¿que?", "²³ a½", "HELLO\u0301 ﬁ Ａ", "a\r\nb",
          "[SEP][CLS]", "hello!!!world", "e\u0301 cafe\u0301", "don't stop the ## a##b"]


@pytest.mark.parametrize("lowercase", [True, False])
def test_wordpiece_matches_huggingface_bert(vocab_file, lowercase):
    pytest.importorskip("transformers")
    try:     # transformers >= 5 keeps the pure-Python tokenizer under this name
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy as Slow
    except ImportError:
        from transformers import BertTokenizer as Slow
    hf = Slow(str(vocab_file), do_lower_case=lowercase)
    ours = WordPieceTokenizer.from_vocab_file(vocab_file, lowercase=lowercase)
    for text in TRICKY:
        assert ours.tokenize(text) == hf.tokenize(text), text
        ids = ours.encode(text)
        assert ids == hf.encode(text), text
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=True) \
                == hf.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=True)
    pair = hf("hello world", "the a", return_token_type_ids=True)
    ids, types = ours.encode_pair("hello world", "the a")
    assert ids == pair["input_ids"] and types == pair["token_type_ids"]


def test_wordpiece_ascii_fast_path_equals_the_general_path():
    """basic_tokenize takes a regex shortcut for printable ASCII; appending one non-ASCII word
    forces the character-by-character path, which must give the same words plus that one."""
    rng = np.random.default_rng(0)
    alphabet = list("abcXYZ019 _-.,!?'\"()[]{}#$%&*+/:;<=>@\\^`|~\t\n\r  ")
    for lowercase in (True, False):
        tok = WordPieceTokenizer(["[UNK]"], lowercase=lowercase)
        for _ in range(300):
            text = "".join(rng.choice(alphabet, int(rng.integers(0, 40))))
            assert tok.basic_tokenize(text) + ["e" if lowercase else "é"] == \
                tok.basic_tokenize(text + " é")
    assert tok.basic_tokenize("a\x0bb") == ["ab"]          # a control character is dropped
