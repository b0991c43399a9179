"""The models: the Transformer family (GPT, a LLaMA-style Llama, BERT, encoder-decoder), an
LSTM language model and a VAE, built on tinyllm.nn, and a count-based Kneser-Ney n-gram model
for comparison. Config dataclasses carry a comment per default."""
from tinyllm.models.bert import (BertConfig, BertForPreTraining, BertForSequenceClassification,
                                 BertModel, convert_hf_bert_state_dict, make_nsp_pairs,
                                 mask_tokens)
from tinyllm.models.gpt import GPT, GPTConfig
from tinyllm.models.llama import Llama, LlamaConfig, convert_hf_llama_state_dict
from tinyllm.models.lstm_lm import LSTMLM, LSTMLMConfig
from tinyllm.models.ngram import KneserNeyLM
from tinyllm.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from tinyllm.models.vae import VAE

__all__ = ["GPT", "GPTConfig", "LSTMLM", "LSTMLMConfig", "KneserNeyLM", "VAE", "Seq2SeqConfig",
           "Seq2SeqTransformer", "BertConfig", "BertModel", "BertForPreTraining",
           "BertForSequenceClassification", "convert_hf_bert_state_dict", "mask_tokens",
           "make_nsp_pairs", "Llama", "LlamaConfig", "convert_hf_llama_state_dict"]
