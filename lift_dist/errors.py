"""User-facing errors: the CLI prints these without a traceback."""


class LiftError(Exception):
    """A problem with the user's input (config, files, data), explained in the message."""


class ConfigError(LiftError):
    """An invalid setting: unknown name, value out of range, inconsistent options."""


class DataError(LiftError):
    """Missing, corrupt or inconsistent data (shards, manifests, images, annotations)."""


def choices(valid) -> str:
    return ", ".join(sorted(str(v) for v in valid))
