"""slimformer: make Transformer NLP models small and fast, measured beside the teacher."""

__version__ = "0.1.0"
