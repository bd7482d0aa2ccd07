"""The one exception type for errors a user can cause.

The CLI turns an :class:`XRBenchError` into one line on stderr and exit code 2; library
code raises it with a message that says what went wrong *and what to do about it*.
"""


class XRBenchError(Exception):
    """A user-facing error: unknown name, missing data, bad checkpoint, malformed JSON..."""
