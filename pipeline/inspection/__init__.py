"""Scheduled batch inspection: inbox scan, ledger, lock, crash-safe commit, batch reports, outbox."""
