"""The check every literal-valued argument of the package makes: the value is one of its choices."""

from collections.abc import Iterable


def check_choice(argument: str, value: object, choices: Iterable[object]) -> None:
    """Raise a ``ValueError`` naming ``argument`` and its choices when ``value`` is not among them.

    Args:
        argument: Name of the argument as the user writes it (constructor argument or config key).
        value: The value given.
        choices: The accepted values.
    """
    options = tuple(choices)
    if value not in options:
        msg = f"{argument} must be one of {options}, got {value!r}."
        raise ValueError(msg)
