"""mindpet_lite.data: tokenizers, Alpaca -> MindRecord conversion, rank-sharded MindDataset batches.

Knows no model and no LoRA.
"""
from mindpet_lite.data.alpaca import convert_alpaca
from mindpet_lite.data.dataset import check_token_ids, create_dataset, dataset_num_rows
from mindpet_lite.data.tokenizer import ByteTokenizer, SentencePieceTokenizer, load_tokenizer

__all__ = ["ByteTokenizer", "SentencePieceTokenizer", "load_tokenizer", "convert_alpaca",
           "create_dataset", "dataset_num_rows", "check_token_ids"]
