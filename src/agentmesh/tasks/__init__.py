"""The task model shared by nodes and the scheduler: specs, states and events."""
