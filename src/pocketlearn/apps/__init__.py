"""Applications built from pocketlearn's pieces: each one a small package that trains a real model end to end.

They use only the library's public parts (methods, memory planner, federated engine), so each doubles as a
worked example of putting them together.
"""
