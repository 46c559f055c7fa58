"""The one base class of the errors a user can act on.

Bad parameters, data that is missing or corrupt, a checkpoint or output folder that cannot be
used, a run whose loss diverged, a rank that lost its peer: each has its own class where it is
raised (``ConfigError``, ``DataMissingError``, ``DataError``, ``CheckpointError``,
``OutDirError``, ``NonFiniteLossError``, ``PeerStoppedError``), and each is also a
:class:`LabError`. Its message says what was wrong and what to do, so ``vfm-lab`` prints it as
one line on stderr, without a traceback (``--debug`` or ``VFM_LAB_DEBUG=1`` shows it). Each
keeps its built-in base too (``ValueError``, ``FileNotFoundError``, ...), so code that
catches those still does.

>>> class Example(LabError, ValueError): ...
>>> isinstance(Example("x"), ValueError), isinstance(Example("x"), LabError)
(True, True)
"""
from __future__ import annotations


class LabError(Exception):
    """An error whose message is the whole story for the user: `vfm-lab` prints it as one line."""
