"""The one exception type that means "the user gave us something we cannot use".

Every message names the file, key or value at fault and what was expected. The command line
prints it on one line and exits with :data:`USER_ERROR_EXIT_CODE`, never with a traceback.
"""

USER_ERROR_EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 130


class HeadstartError(Exception):
    """A problem with the user's input (file, config key, model name, value)."""


__all__ = ["USER_ERROR_EXIT_CODE", "INTERRUPTED_EXIT_CODE", "HeadstartError"]
