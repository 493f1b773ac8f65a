"""Shared kernel: value types and ports used by every context. No I/O here."""
