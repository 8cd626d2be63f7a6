"""pplink."""
