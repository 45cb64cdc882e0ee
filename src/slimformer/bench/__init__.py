"""``slimformer bench``: every variant measured the same way, each in its own process."""
