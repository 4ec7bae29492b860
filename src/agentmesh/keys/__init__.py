"""API keys: where they come from and which one a task uses."""
