"""relsim: relational visual similarity as a drop-in metric."""

__version__ = "0.1.0"
