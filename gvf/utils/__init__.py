"""Small helpers shared across gvf that belong to no model or data stage (file I/O)."""
