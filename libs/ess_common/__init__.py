"""What every ESS service shares: settings, events, messaging, bookkeeping, object store."""
