"""asyncssh, imported without the CryptographyDeprecationWarning lines its import prints
(DSA type hints, under cryptography >= 43): every module of Gantry that uses asyncssh
imports it from here first. Only that warning category, only during the import."""

from __future__ import annotations

import warnings

from cryptography.utils import CryptographyDeprecationWarning

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)
    import asyncssh

__all__ = ["asyncssh"]
