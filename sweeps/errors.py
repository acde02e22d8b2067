"""The error of bad sweep input, raised before any run starts."""


class SweepError(ValueError):
    """A sweep or search spec (or its command-line overrides) is invalid; raised before any run starts."""
