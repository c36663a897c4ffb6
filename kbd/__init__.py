"""kbd: a local knowledge-base daemon built around Apple's CLaRa."""

__version__ = "0.1.0"
