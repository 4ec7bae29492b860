"""Who may ask for what: user and node credentials, and each service's access policy."""
