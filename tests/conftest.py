"""Shared fixtures: tiny random models built from a config, a byte-level tokenizer, tiny scans."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
# The same arithmetic on every CPU: "auto" would take a bfloat16 Gram on CPUs with AMX or
# AVX512-BF16 and float32 elsewhere. Each branch is tested by name (test_decomposition.py).
os.environ["LLM2NIFTI_GRAM_DTYPE"] = "float32"

VOCAB = 258  # 256 bytes + <s> + </s>

TEXT = (
    "The council met on Tuesday to discuss the new budget for the city.\n"
    "Scientists observed a bright comet passing close to the sun last night.\n"
    "The football team won its third match in a row after a late goal.\n"
    "Heavy rain flooded several streets and closed the main bridge.\n"
)


def byte_tokenizer():
    """A byte-level tokenizer (one token per byte) with BOS/EOS, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 byte characters
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<s>"] = 256
    vocab["</s>"] = 257
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def tiny_llama(seed=0, layers=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, bos_token_id=256, eos_token_id=257)
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(seed=0, layers=2):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=layers, n_head=4, n_positions=512,
                     bos_token_id=256, eos_token_id=257)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="session")
def tokenizer():
    return byte_tokenizer()


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture
def gpt2():
    return tiny_gpt2()


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "stories.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


@pytest.fixture
def tiny_scan(tmp_path, tokenizer, text_file):
    """A scan of a tiny Llama over a small text: (ScanResult, model)."""
    from llm2nifti.acquisition.convert import scan

    model = tiny_llama()
    res = scan(tmp_path / "ds", "tinyllama", text_file, run_tokens=100, progress=False,
               loaded=(model, tokenizer), threads=1)
    return res, model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Llama and the byte tokenizer saved as a local Hugging Face folder."""
    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    tiny_llama().save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path
