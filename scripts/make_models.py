"""Build the shipped model folders: tiny local models and full-size architecture configs.

Usage: python -m scripts.make_models --out models

- models/tiny-gemma2, models/tiny-llama3: the real transformers classes with each family's
  traits kept (Gemma2: GQA 2:1, head_dim larger than hidden/heads, sliding window on alternate
  layers, attention and final-logit softcapping, tied embeddings, pad token 0; Llama3: GQA 4:1,
  untied embeddings, no pad token) cut to run on 2 CPU cores in seconds. Each has its own
  byte-level BPE tokenizer trained here on generated arena text. Weights are saved as the
  causal LM, like a hub checkpoint, so loading them as a classifier takes the same path
  (a freshly initialised score head) as google/gemma-2-9b or meta-llama/Meta-Llama-3-8B.
- models/tiny-qwen2, models/tiny-mistral: likewise (Qwen2: GQA 4:1, biases on q/k/v, untied
  embeddings, `<|endoftext|>` as EOS and pad, no sliding window as Qwen2-7B; Mistral: GQA 4:1,
  untied embeddings, no pad token, and no sliding window, as Mistral-7B-v0.3: v0.1's 4096-token
  window is gone there), each with its own tokenizer laid out as the family's.
- models/gemma2-9b, models/llama3-8b, models/qwen2-7b, models/mistral-7b: the full-size configs
  with no weights (random-init timing runs on a GPU) and the family's tiny tokenizer, whose ids
  fit both vocabularies.

Deterministic: the same script gives the same tokenizers and weights (each model from seed 0), so
adding a family leaves the other folders' bytes as they were. `--only NAME,...` writes those
folders alone.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (AutoModelForCausalLM, Gemma2Config, LlamaConfig, MistralConfig, PreTrainedTokenizerFast,
                          Qwen2Config)

from prefbench.sample import generate_arena_sample
from prefbench.data import TEXT_COLUMNS, parse_turns

TINY_VOCAB = 4096

# Gemma2-9B and Llama3-8B as published (config.json of google/gemma-2-9b, meta-llama/Meta-Llama-3-8B).
FULL = {
    "gemma2-9b": Gemma2Config(
        vocab_size=256000, hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
        num_attention_heads=16, num_key_value_heads=8, head_dim=256, sliding_window=4096,
        attn_logit_softcapping=50.0, final_logit_softcapping=30.0, query_pre_attn_scalar=256,
        max_position_embeddings=8192, hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6,
        rope_theta=10000.0, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    ),
    "llama3-8b": LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
        bos_token_id=128000, eos_token_id=128001,
    ),
    # Qwen/Qwen2-7B: q/k/v biases are Qwen2Attention's own (no config key); `use_sliding_window`
    # false, so every layer is full attention and the config keeps no window.
    "qwen2-7b": Qwen2Config(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=131072,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False, use_sliding_window=False,
        sliding_window=131072, max_window_layers=28, bos_token_id=151643, eos_token_id=151643,
    ),
    # mistralai/Mistral-7B-v0.3: no sliding window (v0.1's was 4096).
    "mistral-7b": MistralConfig(
        vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
        rms_norm_eps=1e-5, rope_theta=1000000.0, sliding_window=None, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2,
    ),
}
# Each family's tokenizer layout: its special tokens and whether they open the vocabulary
# (ids 0, 1, ...) or follow the merges (build_tokenizer).
SPECIALS = {
    "gemma2": ({"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>"}, True),
    "llama": ({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}, False),
    # Qwen2's base tokenizer: <|endoftext|> is EOS and pad, no BOS; the chat markers follow it
    "qwen2": ({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}, False),
    # Mistral's: <unk>=0, <s>=1, </s>=2, no pad token
    "mistral": ({"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="models")
    parser.add_argument("--only", help="folders to write, comma-separated (default: all)")
    args = parser.parse_args()
    out = Path(args.out)
    corpus = training_corpus()
    toks = {family: build_tokenizer(corpus, *SPECIALS[family]) for family in SPECIALS}
    gemma_tok, llama_tok, qwen_tok, mistral_tok = toks["gemma2"], toks["llama"], toks["qwen2"], toks["mistral"]
    tiny = {
        "tiny-gemma2": (gemma_tok, Gemma2Config(
            vocab_size=len(gemma_tok), hidden_size=64, intermediate_size=256, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, sliding_window=64,
            attn_logit_softcapping=50.0, final_logit_softcapping=30.0, query_pre_attn_scalar=32,
            max_position_embeddings=2048, tie_word_embeddings=True, pad_token_id=gemma_tok.pad_token_id,
            eos_token_id=gemma_tok.eos_token_id, bos_token_id=gemma_tok.bos_token_id,
        )),
        "tiny-llama3": (llama_tok, LlamaConfig(
            vocab_size=len(llama_tok), hidden_size=64, intermediate_size=224, num_hidden_layers=4,
            num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048,
            rope_theta=500000.0, tie_word_embeddings=False,
            eos_token_id=llama_tok.eos_token_id, bos_token_id=llama_tok.bos_token_id,
        )),
        "tiny-qwen2": (qwen_tok, Qwen2Config(
            vocab_size=len(qwen_tok), hidden_size=64, intermediate_size=224, num_hidden_layers=4,
            num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048,
            rope_theta=1000000.0, tie_word_embeddings=False, use_sliding_window=False,
            eos_token_id=qwen_tok.eos_token_id, bos_token_id=qwen_tok.eos_token_id,
            pad_token_id=qwen_tok.pad_token_id,
        )),
        "tiny-mistral": (mistral_tok, MistralConfig(
            vocab_size=len(mistral_tok), hidden_size=64, intermediate_size=224, num_hidden_layers=4,
            num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048,
            rope_theta=1000000.0, sliding_window=None, tie_word_embeddings=False,
            eos_token_id=mistral_tok.eos_token_id, bos_token_id=mistral_tok.bos_token_id,
        )),
    }
    only = set(args.only.split(",")) if args.only else set(tiny) | set(FULL)
    unknown = only - set(tiny) - set(FULL)
    if unknown:
        parser.error(f"--only: unknown folder(s) {sorted(unknown)}; choose from {', '.join([*tiny, *FULL])}")
    for name, (tok, config) in tiny.items():
        if name not in only:
            continue
        path = out / name
        shutil.rmtree(path, ignore_errors=True)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(path)
        tok.save_pretrained(path)
        print(f"{path}: {sum(p.numel() for p in model.parameters()):,} parameters, vocab {len(tok)}")
    for name, config in FULL.items():
        if name not in only:
            continue
        path = out / name
        shutil.rmtree(path, ignore_errors=True)
        config.save_pretrained(path)
        toks[config.model_type].save_pretrained(path)
        print(f"{path}: config only (random-init), vocab {config.vocab_size}")


def training_corpus() -> list[str]:
    df = generate_arena_sample(3000, seed=12345)  # not the default data's seed
    return [t for col in TEXT_COLUMNS for cell in df[col] for t in parse_turns(cell) if t]


def build_tokenizer(corpus: list[str], specials: dict, specials_first: bool) -> PreTrainedTokenizerFast:
    """Byte-level BPE (any text encodes, emoji and CJK included), with the family's `specials`
    (PreTrainedTokenizerFast keywords; one token may serve two roles) at the start of the
    vocabulary (`specials_first`: Gemma-style <pad>=0, <eos>=1, <bos>=2, <unk>=3; Mistral's
    <unk>=0, <s>=1, </s>=2) or after the merges (Llama3's <|begin_of_text|>, <|end_of_text|>;
    Qwen2's <|endoftext|>, <|im_start|>, <|im_end|>).
    """
    tokens = list(dict.fromkeys(t for v in specials.values() for t in ([v] if isinstance(v, str) else v)))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if specials_first:
        trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=tokens,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(corpus, trainer)
    else:
        trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB - len(tokens),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(corpus, trainer)
        tok.add_special_tokens(tokens)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


if __name__ == "__main__":
    main()
