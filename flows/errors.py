"""Why a run cannot start or go on."""


class RunAborted(RuntimeError):
    """The run cannot go on (bad key, no money...): nothing more is sent."""
