"""foundations layer."""
