"""slimformer: make Transformer NLP models small and fast, measured side by side with the teacher."""

__version__ = "0.1.0"
