"""The notifier: tells PanDA, reliably and once, that a request is ready or failed."""
