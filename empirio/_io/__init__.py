"""The I/O layer: clocks, sleeps, sockets, files and threads around the pure core
(see ARCHITECTURE.md)."""
