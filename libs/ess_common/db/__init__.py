"""The head's bookkeeping: tables, sessions, migrations."""
