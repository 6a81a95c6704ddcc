"""Exceptions shared across the harness layers."""


class CheckFailed(AssertionError):
    """A check of the harness failed (vacuous adapter, lost values, keys, tolerance), as opposed to an
    exception raised by a library. The cell's status is "fail" rather than "error"."""
