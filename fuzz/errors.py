"""Exit codes (CI relies on them) and the error that carries a message for the user.

0 nothing new / no divergence, 1 new findings / the case reproduces, 2 procfuzz itself failed
(bad input, model bug, harness error, no kernel, a full disk).
"""

EXIT_OK, EXIT_FOUND, EXIT_TOOL = 0, 1, 2


class ToolError(Exception):
    """A clear one-line message for the user; the command exits 2."""
