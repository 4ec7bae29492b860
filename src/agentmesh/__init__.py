"""agentmesh: Gemini CLI agents across the machines you own, coordinated through PostgreSQL."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("agentmesh")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+source"
