"""guests layer (see DESIGN.md)."""
