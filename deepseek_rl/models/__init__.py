"""Models and tokenizers: loading any Hugging Face causal LM or building a tiny random one (loading.py), the
character tokenizer of the procedural tasks (char_tokenizer.py), and LoRA adapters (lora.py)."""
