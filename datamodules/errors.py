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
