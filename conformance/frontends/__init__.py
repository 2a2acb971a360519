"""Front ends: the ``attnspec`` CLI, the pytest plugin and the public hypothesis strategies."""
