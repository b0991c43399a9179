"""The Transformer family built on tinyllm.nn. Config dataclasses carry a comment per default."""
from tinyllm.models.bert import (BertConfig, BertForPreTraining, BertForSequenceClassification,
                                 BertModel, convert_hf_bert_state_dict, make_nsp_pairs,
                                 mask_tokens)
from tinyllm.models.gpt import GPT, GPTConfig
from tinyllm.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer

__all__ = ["GPT", "GPTConfig", "Seq2SeqConfig", "Seq2SeqTransformer", "BertConfig", "BertModel",
           "BertForPreTraining", "BertForSequenceClassification", "convert_hf_bert_state_dict",
           "mask_tokens", "make_nsp_pairs"]
