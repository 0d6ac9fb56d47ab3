"""The hub's sessions, templates and static files; its routes are in api/hub.py."""
