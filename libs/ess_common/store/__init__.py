"""The object store of event-range files: S3 in production, a local directory embedded."""
