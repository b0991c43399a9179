"""Data: tokenizers (characters, byte-level BPE, WordPiece); corpora and batching.

    from tinyllm.data import ByteBPETokenizer
    tok = ByteBPETokenizer.train(open("input.txt").read(), vocab_size=512, specials=("<eos>",))
    ids = tok.encode("To be, or not to be")

Needs only Python and NumPy: nothing here imports tinyllm's autograd, ops, nn or models.
"""
from tinyllm.data.corpora import (CORPORA, corpus_path, data_dir, get_batch,
                                  load_labelled_sentences, load_sentence_pairs, load_text,
                                  train_val_split)
from tinyllm.data.tokenizers import (BOS, CLS, EOS, MASK, PAD, SEP, UNK, ByteBPETokenizer,
                                     CharTokenizer, Tokenizer, WordPieceTokenizer,
                                     bytes_to_unicode, load_tokenizer)

__all__ = ["Tokenizer", "CharTokenizer", "ByteBPETokenizer", "WordPieceTokenizer",
           "load_tokenizer", "bytes_to_unicode", "PAD", "UNK", "CLS", "SEP", "MASK", "BOS", "EOS",
           "CORPORA", "corpus_path", "data_dir", "load_text", "train_val_split", "get_batch",
           "load_labelled_sentences", "load_sentence_pairs"]
