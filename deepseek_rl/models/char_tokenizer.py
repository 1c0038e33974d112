"""A character-level tokenizer for procedural tasks, saved and loaded as an ordinary Hugging Face tokenizer.

Every printable ASCII character (and newline) is one token; the reasoning tags `<think>`, `</think>`, `<answer>`,
`</answer>` are single tokens too (not "special", so decoding keeps them). `save_pretrained` writes a standard
`tokenizer.json` that `AutoTokenizer.from_pretrained` loads back unchanged.
"""

from __future__ import annotations

import string

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")
ALPHABET = tuple(string.printable[:95]) + ("\n",)  # digits, letters, punctuation, space, newline


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + ALPHABET)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=1 << 20,
    )
