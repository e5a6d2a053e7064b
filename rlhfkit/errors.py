"""Errors a user can act on. The CLI prints them as one clear message, without a traceback."""


class RlhfkitError(Exception):
    """Base class of every error that is the user's to fix (bad config, bad data, missing file)."""


class ConfigError(RlhfkitError):
    """An unknown key, a value of the wrong type, or an inconsistent combination of keys."""


def relabel_error(err: ConfigError, key: str, loader_keys: tuple[str, ...] = ("model",)):
    """`err` from a shared loader with its leading ``LOADER_KEY: `` replaced by ``key``.

    The loaders name the key they usually serve (`model`, `reward_model`); a recipe that calls
    one for another key (``dpo.reference``, ``ppo.gold_reward``, label's ``judge``) re-labels the
    message so it names the key the user set. Errors about other keys are returned unchanged.
    """
    message = str(err)
    for loader_key in loader_keys:
        prefix = f"{loader_key}: "
        if message.startswith(prefix):
            return ConfigError(f"{key}: {message[len(prefix) :]}")
    return err


class DataError(RlhfkitError):
    """A malformed record. The message starts with ``file:line: field: problem``."""

    def __init__(self, source: str, line: int | None, field: str | None, problem: str):
        self.source, self.line, self.field, self.problem = source, line, field, problem
        where = f"{source}:{line}" if line is not None else source
        what = f"{field}: {problem}" if field else problem
        super().__init__(f"{where}: {what}")


class TrainingDiverged(RlhfkitError):
    """The loss became NaN or infinite; the last good checkpoint is left intact."""
