"""reconciler: replace cloud instances to match a git-committed desired state."""

__version__ = "0.1.0"
