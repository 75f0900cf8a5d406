"""The wire: pure bytes <-> messages, authenticated before they are decoded. No I/O here."""
