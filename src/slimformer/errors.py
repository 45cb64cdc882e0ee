"""User-facing errors: each names the problem, the offending value and the fix.

The CLI prints these as one paragraph (``--debug`` shows the traceback); anything else
escaping is a bug in slimformer, not in the user's input.
"""


class SlimformerError(Exception):
    """Base class for every error caused by the user's input or environment."""


class RecipeError(SlimformerError):
    """A recipe key is unknown, has the wrong type, or an impossible value."""


class DataError(SlimformerError):
    """A data file is missing, unreadable, empty, or lacks a needed column or label."""


class ModelError(SlimformerError):
    """A model cannot be loaded, or teacher and student do not fit together."""


class OutputExistsError(SlimformerError):
    """The run folder exists and neither --overwrite nor --resume was given."""


class ExportError(SlimformerError):
    """A model cannot be exported, quantized, or its export does not match PyTorch."""
