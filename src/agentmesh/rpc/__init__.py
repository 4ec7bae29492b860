"""The gRPC edge: servers, channels, authentication, errors and message conversion."""
