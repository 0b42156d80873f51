"""nplm: a config-driven experiment runner for Bengio et al.'s Neural Probabilistic Language Model."""

__version__ = "0.1.0"
