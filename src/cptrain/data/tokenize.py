"""Text -> token ids with the model's Hugging Face tokenizer: batched, BOS per config, EOS always last."""

from __future__ import annotations

import hashlib

import numpy as np

from cptrain.configtools import ConfigError


class DocumentTokenizer:
    """Encodes whole documents; special-token strings inside the text stay plain text.

    A document whose text contains "<|endoftext|>" must not end early, so the Rust tokenizer is
    told to encode special tokens found in text as ordinary text (`encode_special_tokens`).
    """

    def __init__(self, tokenizer, add_bos: bool | str = "auto", eos_token: str | None = None):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ConfigError(
                f"{type(tokenizer).__name__} is not a fast (Rust) tokenizer; cptrain needs one "
                "(the model directory should hold tokenizer.json)"
            )
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_str(backend.to_str())  # a private copy: settings do not leak out
        self.backend.encode_special_tokens = True
        self.backend.no_truncation()
        self.backend.no_padding()
        eos_token = eos_token or tokenizer.eos_token
        if eos_token is None:
            raise ConfigError(
                "the tokenizer has no eos token; set data.eos_token to the token that ends "
                "a document, e.g. data.eos_token = '<|endoftext|>'"
            )
        self.eos_id = self.backend.token_to_id(eos_token)
        if self.eos_id is None:
            raise ConfigError(f"data.eos_token = {eos_token!r} is not a token of this tokenizer")
        if add_bos == "auto":  # the model's convention: does the tokenizer itself start a text with BOS?
            bos = tokenizer.bos_token_id
            add_bos = bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]
        self.bos_id = tokenizer.bos_token_id if add_bos else None
        if add_bos and self.bos_id is None:
            raise ConfigError(
                "data.add_bos = true but the tokenizer has no bos token; set data.add_bos = false"
            )
        self.vocab_size = self.backend.get_vocab_size(with_added_tokens=True)
        self.dtype = np.uint16 if self.vocab_size <= 2**16 else np.uint32
        self.fingerprint = tokenizer_fingerprint(self.backend.to_str(), add_bos, eos_token)

    def encode_ids(self, texts: list[str]) -> list[list[int]]:
        """The Rust tokenizer alone: token ids of each text, no BOS / EOS."""
        fast = getattr(self.backend, "encode_batch_fast", None)  # tokenizers >= 0.20: no offsets computed
        encodings = (
            fast(texts, add_special_tokens=False)
            if fast
            else self.backend.encode_batch(texts, add_special_tokens=False)
        )
        return [e.ids for e in encodings]

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """One int64 array per text: [BOS] text tokens EOS."""
        head = [self.bos_id] if self.bos_id is not None else []
        return [np.array(head + ids + [self.eos_id], dtype=np.int64) for ids in self.encode_ids(texts)]

    def decode(self, ids) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)


def tokenizer_fingerprint(tokenizer_json: str, add_bos: bool, eos_token: str) -> str:
    h = hashlib.blake2b(tokenizer_json.encode(), digest_size=12)
    h.update(f"\0bos={add_bos}\0eos={eos_token}".encode())
    return h.hexdigest()
