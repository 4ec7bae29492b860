"""Executors: how a node runs each kind of task (echo, shell, gemini)."""
