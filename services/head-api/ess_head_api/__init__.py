"""The head API: requests from PanDA, lookups from pilots, status for operators."""
