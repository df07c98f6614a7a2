"""cptrain: continued pretraining of decoder LLMs on raw text."""

__version__ = "0.1.0"
