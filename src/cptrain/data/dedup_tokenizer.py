"""A regex word tokenizer that plugs into datatrove where it takes a language or a WordTokenizer.

datatrove's English tokenizer is spaCy, which splits about 0.2 MB of text per second per core; for
MinHash shingles (computed on text that datatrove already lowercased and stripped of punctuation)
and for the Gopher/C4 word counts of space-separated languages, regex words give the same shingles
at ~100x the speed. Languages written without spaces (zh, ja, th, ...) need
`word_tokenizer = "datatrove"`.
"""

from __future__ import annotations

import re

from datatrove.utils.word_tokenizers import WordTokenizer

_WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
# a sentence ends at . ! ? (possibly followed by quotes / brackets) before whitespace, or at a blank line
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)|\n\s*\n")


class FastWordTokenizer(WordTokenizer):
    """Words are runs of letters/digits (with inner apostrophes); every other non-space char is a token."""

    def __init__(self) -> None:
        super().__init__("fast")

    def word_tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text)

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        spans, start = [], 0
        for m in _SENTENCE_END.finditer(text):
            if text[start : m.end()].strip():
                spans.append((start, m.end()))
            start = m.end()
        if text[start:].strip():
            spans.append((start, len(text)))
        return spans

    def sent_tokenize(self, text: str) -> list[str]:
        return [text[a:b].strip() for a, b in self.span_tokenize(text)]


def word_tokenizer(kind: str, language: str) -> WordTokenizer | str:
    """What datatrove's `language=` arguments get: our tokenizer, or the language code for its own."""
    if kind == "fast":
        return FastWordTokenizer()
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    try:
        load_word_tokenizer(language)
    except ValueError as e:
        from cptrain.configtools import ConfigError

        raise ConfigError(f"language = {language!r}: datatrove has no tokenizer for it ({e})") from None
    return language
