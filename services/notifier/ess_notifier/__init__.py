"""The notifier: tells PanDA, reliably and once, that a request is ready, failed or cancelled,
and, when asked, that each of its files is ready."""
