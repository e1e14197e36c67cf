"""Build the shipped model folders: tiny local models and full-size architecture configs.

Usage: python -m scripts.make_models --out models

- models/tiny-gemma2, models/tiny-llama3: the real transformers classes with each family's
  traits kept (Gemma2: GQA 2:1, head_dim larger than hidden/heads, sliding window on alternate
  layers, attention and final-logit softcapping, tied embeddings, pad token 0; Llama3: GQA 4:1,
  untied embeddings, no pad token) cut to run on 2 CPU cores in seconds. Each has its own
  byte-level BPE tokenizer trained here on generated arena text. Weights are saved as the
  causal LM, like a hub checkpoint, so loading them as a classifier takes the same path
  (a freshly initialised score head) as google/gemma-2-9b or meta-llama/Meta-Llama-3-8B.
- models/gemma2-9b, models/llama3-8b: the full-size configs with no weights (random-init
  timing runs on a GPU) and the family's tiny tokenizer, whose ids fit both vocabularies.

Deterministic: the same script gives the same tokenizers and weights.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig, PreTrainedTokenizerFast

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
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="models")
    args = parser.parse_args()
    out = Path(args.out)
    corpus = training_corpus()
    gemma_tok = build_tokenizer(corpus, specials_first=True)
    llama_tok = build_tokenizer(corpus, specials_first=False)
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
    }
    for name, (tok, config) in tiny.items():
        path = out / name
        shutil.rmtree(path, ignore_errors=True)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(path)
        tok.save_pretrained(path)
        print(f"{path}: {sum(p.numel() for p in model.parameters()):,} parameters, vocab {len(tok)}")
    for name, config in FULL.items():
        path = out / name
        shutil.rmtree(path, ignore_errors=True)
        config.save_pretrained(path)
        (gemma_tok if name.startswith("gemma") else llama_tok).save_pretrained(path)
        print(f"{path}: config only (random-init), vocab {config.vocab_size}")


def training_corpus() -> list[str]:
    df = generate_arena_sample(3000, seed=12345)  # not the default data's seed
    return [t for col in TEXT_COLUMNS for cell in df[col] for t in parse_turns(cell) if t]


def build_tokenizer(corpus: list[str], specials_first: bool) -> PreTrainedTokenizerFast:
    """Byte-level BPE (any text encodes, emoji and CJK included).

    Gemma-style: <pad>=0, <eos>=1, <bos>=2, <unk>=3 at the start of the vocabulary.
    Llama3-style: <|begin_of_text|>, <|end_of_text|> after the merges, and no pad token.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if specials_first:
        specials = {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>"}
        trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=list(specials.values()),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(corpus, trainer)
    else:
        specials = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}
        trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB - len(specials),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(corpus, trainer)
        tok.add_special_tokens(list(specials.values()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


if __name__ == "__main__":
    main()
