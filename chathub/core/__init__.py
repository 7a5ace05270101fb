"""The sans-I/O hub: protocol parsing and room/fan-out state, no sockets, no clock."""
