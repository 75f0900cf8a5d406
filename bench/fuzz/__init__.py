"""Fuzzing of what a LAN peer or a local user can send. `python -m bench.fuzz` runs the datagram
decoders and the control protocol (targets.py); `python -m bench.fuzz.channel` the migration
channel's handshake and frames (channel.py)."""
