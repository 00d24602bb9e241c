"""Detokenisers of the SEDD zero-shot protocol (Lou et al. 2024, data.py), applied to each row before GPT-2 BPE.

The benchmark files are pre-tokenised (spaces around punctuation, '@-@' for hyphens, 'N' for numbers in PTB);
these rules undo that so GPT-2's tokeniser sees natural text. They are reproduced rule by rule, including two with
little effect ("/' [0-9]/" matches only that literal text; PTB's ' N ' loop), so perplexities stay comparable.
"""
from __future__ import annotations

import re
from typing import Callable


def wikitext_detokenizer(string: str) -> str:
  """WikiText-2 / WikiText-103 (the lm-eval-harness / Megatron wikitext rules)."""
  # contractions
  string = string.replace("s '", "s'")
  string = re.sub(r"/' [0-9]/", r"/'[0-9]/", string)
  # number separators
  string = string.replace(' @-@ ', '-')
  string = string.replace(' @,@ ', ',')
  string = string.replace(' @.@ ', '.')
  # punctuation
  string = string.replace(' : ', ': ')
  string = string.replace(' ; ', '; ')
  string = string.replace(' . ', '. ')
  string = string.replace(' ! ', '! ')
  string = string.replace(' ? ', '? ')
  string = string.replace(' , ', ', ')
  # brackets and quotes
  string = re.sub(r'\(\s*([^\)]*?)\s*\)', r'(\1)', string)
  string = re.sub(r'\[\s*([^\]]*?)\s*\]', r'[\1]', string)
  string = re.sub(r'{\s*([^}]*?)\s*}', r'{\1}', string)
  string = re.sub(r'\"\s*([^\"]*?)\s*\"', r'"\1"', string)
  string = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", string)
  # miscellaneous
  string = string.replace('= = = =', '====')
  string = string.replace('= = =', '===')
  string = string.replace('= =', '==')
  string = string.replace(' ' + chr(176) + ' ', chr(176))
  string = string.replace(' \n', '\n')
  string = string.replace('\n ', '\n')
  string = string.replace(' N ', ' 1 ')
  string = string.replace(" 's", "'s")
  return string


def ptb_detokenizer(string: str) -> str:
  """Penn Treebank (ptb_text_only)."""
  string = string.replace(" 's", "'s")
  string = string.replace("s ' ", "s' ")
  string = string.replace(" n't", "n't")
  string = string.replace(' \n ', '\n')
  string = string.replace('\\/', '/')
  for _ in range(10):
    string = string.replace(' N ', ' 1 ')
  string = string.replace('$ 1', '$1')
  string = string.replace('# 1', '#1')
  string = string.replace('<unk>', '?')
  return string


def lm1b_detokenizer(string: str) -> str:
  """One Billion Words (lm1b)."""
  string = string.replace('http : / / ', 'http://')
  string = string.replace('https : / / ', 'https://')
  string = re.sub(r" \'(\w+)", r"'\1", string)
  string = re.sub(r' (\w+) \. ', r' \1. ', string)
  string = re.sub(r' (\w+) \.$', r' \1.', string)
  string = string.replace(' ? ', '? ')
  string = re.sub(r' \?$', '?', string)
  string = string.replace(' ! ', '! ')
  string = re.sub(r' \!$', '!', string)
  string = string.replace(' , ', ', ')
  string = string.replace(' : ', ': ')
  string = string.replace(' ; ', '; ')
  string = string.replace(' / ', '/')
  string = re.sub(r'\" ([^\"]+) \"', r'"\1"', string)
  string = re.sub(r"\' ([^\']+) \'", r"'\1'", string)
  string = re.sub(r'\( ([^\(\)]+) \)', r'(\1)', string)
  string = re.sub(r'\[ ([^\[\]]+) \]', r'[\1]', string)
  string = string.replace('$ ', '$')
  string = string.replace('£ ', '£')
  return string


def lambada_detokenizer(string: str) -> str:
  """LAMBADA (OpenAI's lambada_test.jsonl): straight quotes, and a leading newline as SEDD."""
  string = string.replace('\u201c', '"')
  string = string.replace('\u201d', '"')
  return '\n' + string.strip()


DETOKENIZERS: dict[str, Callable[[str], str]] = {
    'wikitext': wikitext_detokenizer, 'ptb': ptb_detokenizer, 'lm1b': lm1b_detokenizer,
    'lambada': lambada_detokenizer,
}
