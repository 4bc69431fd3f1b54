"""tipml: the learning side of the tips app."""

__version__ = "0.1.0"
