"""vidt: Decision Transformers from offline data to a served policy."""

__version__ = "0.1.0"
