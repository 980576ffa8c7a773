"""The edge: one site's cache and CPU, heartbeating to the head and running its workers."""
