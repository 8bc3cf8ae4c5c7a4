"""The one exception type for errors a user can cause.

Bad configuration, bad or corrupt input files, missing credentials, NaNs and
grid mismatches raise :class:`MyriadError` with a message that says *what* is
wrong and *where*. The CLI prints that message alone (no traceback) and exits
non-zero; library callers can catch it.
"""


class MyriadError(Exception):
    """A problem the user can fix: the message names it and where it is."""
