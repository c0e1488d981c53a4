from . import __getattr__  # noqa: F401  (every name is the unavailable stand-in)
