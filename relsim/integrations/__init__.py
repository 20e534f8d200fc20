"""Bridges to other frameworks, each an optional extra: :mod:`relsim.integrations.ray` (``relsim[ray]``)."""
