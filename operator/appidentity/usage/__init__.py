"""Least privilege from what the application does: an identity's spec entries measured against
the API server's audit Events (used, unused, denied) and a tighter spec proposed from them.

Pure but for reading the Events' bytes: the CLI (`cli/usage.py`) gives it the AppIdentity, the
rules of the ClusterRoles it binds and the streams to read; nothing here talks to the API
server, and nothing here changes an AppIdentity."""
