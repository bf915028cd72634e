"""pytest plugin: encrypted volumes as fixtures (registered through the ``pytest11`` entry point).

Fixtures arrive with the mount daemon; see README "Testing your database on volumed".
"""
