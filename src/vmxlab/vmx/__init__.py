"""vmx layer (see DESIGN.md)."""
