"""A character-level tokenizer for procedural tasks, saved and loaded as an ordinary Hugging Face tokenizer.

Every printable ASCII character (and newline) is one token; the reasoning tags `<think>`, `</think>`, `<answer>`,
`</answer>` are single tokens too (not "special", so decoding keeps them). `save_pretrained` writes a standard
`tokenizer.json` that `AutoTokenizer.from_pretrained` loads back unchanged. `char_chat` is the same tokenizer with a
chat template (role markers spelled in characters), so recipes with chat data and TRL-format rewards run on the tiny
models with no download (`model.tokenizer=char_chat`, the smoke_chat recipe).
"""

from __future__ import annotations

import string

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")
ALPHABET = tuple(string.printable[:95]) + ("\n",)  # digits, letters, punctuation, space, newline


# <|role|> lines, then the content; the generation prompt opens the assistant's turn.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>\n{%- endif -%}"
)


def build_char_tokenizer(chat: bool = False) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + ALPHABET)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=1 << 20,
    )
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
