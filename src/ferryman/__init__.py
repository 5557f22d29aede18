"""ferryman: a forward and reverse HTTP proxy on uvloop + httptools."""

__version__ = "0.1.0"
