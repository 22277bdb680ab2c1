"""The ``keel`` command line: the user's edge of the system."""
