"""Data sets that ship inside packages, and how to split them among clients."""
