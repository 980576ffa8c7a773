"""The `ess` command: the embedded mode (every service in one process) and operator tools."""
