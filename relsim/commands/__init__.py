"""The ``relsim`` command's groups, one module each (see :mod:`relsim.cli`); ``_common`` holds what they share."""
