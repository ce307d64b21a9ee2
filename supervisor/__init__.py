"""qasup: a process supervisor for GPU question-answering stacks, built to run as PID 1.

The package is named ``supervisor`` (like supervisord's); qasup replaces it, so the two must
not share one Python environment.
"""

__version__ = "0.1.0"
