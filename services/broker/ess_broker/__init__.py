"""The broker: records requests, assigns files to edges, keeps the head's bookkeeping."""
