"""The pure layer: every decision and all shared state, with no I/O (see ARCHITECTURE.md)."""
