"""The project's one error type for user mistakes.

Bad data, a wrong config value, a file that is not a checkpoint, an unreadable image: each is
raised as a `UserError` (or a subclass naming the kind), and the command-line tools print it as
one `error:` line. Anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """A mistake in what the user gave us; the message names the file or option and what is wrong."""


class DatasetError(UserError):
    """A dataset folder or annotation file that cannot be used as it is."""


class InputImageError(UserError):
    """An input that is not a readable image; the message starts with its path."""


class ConfigError(UserError):
    """An option whose value can never work (a negative size, a rate outside its range)."""


def check_range(
    name: str,
    value: float | None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise ConfigError unless low <= value <= high (`low_open`/`high_open`: strictly); None bounds are open ends."""
    if value is None:
        return
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if not (too_low or too_high):
        return
    if low is not None and high is not None:
        if (low, high, low_open, high_open) == (0, 1, True, True):
            raise ConfigError(f"{name} must be between 0 and 1, got {value}")
        brackets = ("(" if low_open else "[") + f"{low:g}, {high:g}" + (")" if high_open else "]")
        raise ConfigError(f"{name} must be in {brackets}, got {value}")
    if low is not None:
        raise ConfigError(f"{name} must be {'above' if low_open else 'at least'} {low:g}, got {value}")
    raise ConfigError(f"{name} must be {'below' if high_open else 'at most'} {high:g}, got {value}")
