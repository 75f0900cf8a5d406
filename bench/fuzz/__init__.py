"""Fuzzing of what a LAN peer or a local user can send: the datagram decoders and the control
protocol. `python -m bench.fuzz` runs every target; see __main__.py for the options."""
