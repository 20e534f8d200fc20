"""transformers' load reports and progress bars off for a block: loading weights already on disk is not news.

Example:
    >>> with quiet_transformers():                                  # doctest: +SKIP
    ...     model = AutoModel.from_pretrained(path)
"""

from __future__ import annotations

import contextlib

__all__ = ["quiet_transformers"]


@contextlib.contextmanager
def quiet_transformers():
    """transformers' load reports and "Loading weights" bars off for a block (one bar per load of weights
    already on disk is noise), restored afterwards."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
