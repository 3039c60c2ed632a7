"""msearchd: the task-control daemon of msearch."""

__version__ = "0.1.0"
