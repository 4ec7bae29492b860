"""The agents' memory: user profiles, knowledge, the home network, and a task's context."""
