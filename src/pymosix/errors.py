"""The exceptions pymosix raises; each message is one line that names the fix where there is one."""


class PymosixError(Exception):
    """Root of every error pymosix raises on purpose."""


class ConfigError(PymosixError):
    """A configuration file, flag or map file is wrong."""


class DecodeError(PymosixError):
    """Bytes from the network or a file do not form a valid message."""


class AuthError(PymosixError):
    """A message failed authentication (wrong key, forged, or replayed)."""


class NotRunningError(PymosixError):
    """No node agent answers on the control socket."""


class MigrationError(PymosixError):
    """A migration could not be done; the job continues where it was."""


class JobCannotMove(MigrationError):
    """The job itself cannot move, to any node (openMosix's cantmove); it stays where it is."""


class CriuError(PymosixError):
    """CRIU is missing or failed."""
