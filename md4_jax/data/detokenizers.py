"""Detokenisers of the SEDD zero-shot protocol (Lou et al. 2024, data.py), applied to each row before GPT-2 BPE.

The benchmark files are pre-tokenised (spaces around punctuation, '@-@' for hyphens, 'N' for numbers in PTB);
these rules undo that so GPT-2's tokeniser sees natural text. They are reproduced rule by rule, including two with
little effect ("/' [0-9]/" matches only that literal text; PTB's ' N ' loop), so perplexities stay comparable.
"""
from __future__ import annotations

import re
from typing import Callable


def _apply(string: str, rules: tuple[tuple[str | re.Pattern, str], ...]) -> str:
  """Applies the (old, new) rules in order: `old.sub(new, string)` for a regex, else `string.replace(old, new)`."""
  for old, new in rules:
    string = old.sub(new, string) if isinstance(old, re.Pattern) else string.replace(old, new)
  return string


_WIKITEXT = (
    # contractions
    ("s '", "s'"), (re.compile(r"/' [0-9]/"), r"/'[0-9]/"),
    # number separators
    (' @-@ ', '-'), (' @,@ ', ','), (' @.@ ', '.'),
    # punctuation
    (' : ', ': '), (' ; ', '; '), (' . ', '. '), (' ! ', '! '), (' ? ', '? '), (' , ', ', '),
    # brackets and quotes
    (re.compile(r'\(\s*([^\)]*?)\s*\)'), r'(\1)'),
    (re.compile(r'\[\s*([^\]]*?)\s*\]'), r'[\1]'),
    (re.compile(r'{\s*([^}]*?)\s*}'), r'{\1}'),
    (re.compile(r'\"\s*([^\"]*?)\s*\"'), r'"\1"'),
    (re.compile(r"'\s*([^']*?)\s*'"), r"'\1'"),
    # miscellaneous
    ('= = = =', '===='), ('= = =', '==='), ('= =', '=='), (' ' + chr(176) + ' ', chr(176)),
    (' \n', '\n'), ('\n ', '\n'), (' N ', ' 1 '), (" 's", "'s"),
)
_PTB = (
    (" 's", "'s"), ("s ' ", "s' "), (" n't", "n't"), (' \n ', '\n'), ('\\/', '/'),
    *[(' N ', ' 1 ')] * 10,  # SEDD's loop of 10 replacements
    ('$ 1', '$1'), ('# 1', '#1'), ('<unk>', '?'),
)
_LM1B = (
    ('http : / / ', 'http://'), ('https : / / ', 'https://'),
    (re.compile(r" \'(\w+)"), r"'\1"),
    (re.compile(r' (\w+) \. '), r' \1. '),
    (re.compile(r' (\w+) \.$'), r' \1.'),
    (' ? ', '? '), (re.compile(r' \?$'), '?'),
    (' ! ', '! '), (re.compile(r' \!$'), '!'),
    (' , ', ', '), (' : ', ': '), (' ; ', '; '), (' / ', '/'),
    (re.compile(r'\" ([^\"]+) \"'), r'"\1"'),
    (re.compile(r"\' ([^\']+) \'"), r"'\1'"),
    (re.compile(r'\( ([^\(\)]+) \)'), r'(\1)'),
    (re.compile(r'\[ ([^\[\]]+) \]'), r'[\1]'),
    ('$ ', '$'), ('£ ', '£'),
)


def wikitext_detokenizer(string: str) -> str:
  """WikiText-2 / WikiText-103 (the lm-eval-harness / Megatron wikitext rules)."""
  return _apply(string, _WIKITEXT)


def ptb_detokenizer(string: str) -> str:
  """Penn Treebank (ptb_text_only)."""
  return _apply(string, _PTB)


def lm1b_detokenizer(string: str) -> str:
  """One Billion Words (lm1b)."""
  return _apply(string, _LM1B)


def lambada_detokenizer(string: str) -> str:
  """LAMBADA (OpenAI's lambada_test.jsonl): straight quotes, and a leading newline as SEDD."""
  string = string.replace('\u201c', '"')
  string = string.replace('\u201d', '"')
  return '\n' + string.strip()


DETOKENIZERS: dict[str, Callable[[str], str]] = {
    'wikitext': wikitext_detokenizer, 'ptb': ptb_detokenizer, 'lm1b': lm1b_detokenizer,
    'lambada': lambada_detokenizer,
}
