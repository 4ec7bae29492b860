"""The SQL migrations, shipped as package data of `agentmesh.schema`."""
