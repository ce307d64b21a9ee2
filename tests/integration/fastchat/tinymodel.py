"""Writes a tiny random-weight Llama model that FastChat's ``model_worker`` loads on the CPU.

Run with the FastChat venv's Python (it needs torch, transformers and tokenizers)::

    tests/integration/.venv-fastchat/bin/python tests/integration/fastchat/tinymodel.py OUT_DIR

``OUT_DIR`` then holds a Hugging Face model folder (``config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json``, ...) of about 100 KB: a Llama with one layer of width 32 and a byte-level BPE
tokenizer with no merges (every byte is a token), built locally with the ``tokenizers`` library and saved as a
``PreTrainedTokenizerFast``. Nothing is downloaded (``HF_HUB_OFFLINE=1`` is set here). The weights are random
(seeded), so the model writes noise, but every code path of a real worker runs: loading, registration with the
controller, tokenisation, generation, streaming back through the OpenAI API server.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SPECIALS = ["<unk>", "<s>", "</s>"]


def write(out_dir: str) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    # Byte-level BPE without merges: the 256 byte symbols of GPT-2's byte-to-unicode table, plus the specials.
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for sym in sorted(alphabet):
        vocab[sym] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>", model_max_length=2048)
    fast.save_pretrained(out_dir)

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<unk>"],
                         tie_word_embeddings=False, torch_dtype="float32")
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir, safe_serialization=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: tinymodel.py OUT_DIR")
    write(sys.argv[1])
