"""What every subcommand shares: the one-line parser, the argument types, and UsageError."""

import argparse
import math
import re


class UsageError(ValueError):
    """A bad command-line value, file or checkpoint: reported in one line on stderr, exit status 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump) and which never abbreviates options."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def learning_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be finite and > 0, got {text!r}")
    return value


def learning_rates(text: str) -> tuple[float, ...]:
    """Comma-separated learning rates, each finite and > 0, at least one."""
    try:
        return tuple(learning_rate(part) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers > 0 such as 0.001,0.01,0.1, got {text!r}") from None


def hidden_sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(positive_int(part) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers such as 5 or 16,8, got {text!r}") from None


def batch_size(text: str) -> int | str:
    return text if text == "full" else positive_int(text)  # "full" becomes None once defaults are set


def device_count(text: str) -> int | None:
    return None if text == "all" else positive_int(text)


def seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**32 - 1], got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**32 - 1], got {text!r}")
    return value


#: One name of a --features list: "quoted" (kept exactly, "" for a quote inside) or plain (spaces around it dropped),
#: then a comma or the end.
COLUMN_NAME = re.compile(r'\s*(?:"((?:[^"]|"")*)"\s*|([^,"]*))(,|$)')


def column_names(text: str) -> tuple[str, ...]:
    """Column names as one CSV row: `a, b` is ('a', 'b'); quote a name to keep its commas and surrounding spaces:
    `"a,b", " c "` is ('a,b', ' c '). Each name at least one character, none twice."""
    names, position, separator = [], 0, ","
    while separator:
        match = COLUMN_NAME.match(text, position)
        quoted, plain = (None, "") if match is None else match.group(1, 2)
        name = quoted.replace('""', '"') if quoted is not None else plain.strip()
        if not name:
            raise argparse.ArgumentTypeError("expected comma-separated column names such as age,bmi (quote a name "
                                             f'holding a comma or spaces to keep: "a,b"), got {text!r}')
        if name in names:
            raise argparse.ArgumentTypeError(f"column {name!r} is named twice")
        names.append(name)
        position, separator = match.end(), match.group(3)
    return tuple(names)
