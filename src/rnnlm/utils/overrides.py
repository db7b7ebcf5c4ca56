"""Any text on the command line: ``prompt=循环`` reaches the config as typed.

Hydra's override grammar reads only printable ASCII outside quotes, and it fails on
anything else inside ``hydra.main``, before any of our code runs; it also strips
whitespace (a ``stop`` of one tab or newline) from unquoted values. The entry points pass
``sys.argv`` through :func:`quote_text_overrides` first.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

from rnnlm.utils.errors import ConfigError, RnnlmError

CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # whitespace Hydra would strip, characters it cannot lex
# What makes a value Hydra syntax rather than text: a sweep's comma, a list, a dict, a function
# call (choice(...), range(...)) or an interpolation.
HYDRA_SYNTAX = re.compile(r",|\$\{|^\s*[\[{]|^\s*\w+\(.*\)\s*$", re.DOTALL)
TEXT_OPTIONS = ("prompt", "stop", "text")  # sample.py's options that hold text, not paths
FLAGS_WITH_VALUES = {"-cp", "-cn", "-cd", "--config-path", "--config-name", "--config-dir", "--experimental-rerun"}


def quote_value(value: str) -> str:
    """``value`` as a single-quoted Hydra string that resolves back to exactly ``value``.

    Inside quotes Hydra reads backslashes literally except a run of them right before a quote
    (or before the closing quote), which is doubled, and ``\\'`` is a quote. ``${`` starts an
    interpolation in OmegaConf, ``\\${`` is a literal one, so backslashes before it are doubled too.
    """
    value = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    value = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)
    value = re.sub(r"(\\+)\Z", lambda m: m.group(1) * 2, value)
    return f"'{value}'"


def _hydra_reads(arg: str, value: str) -> bool:
    """Whether Hydra parses ``arg`` and keeps ``value``'s text as typed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_override(arg)
    except HydraException:
        return False
    quoted = value[:1] in ("'", '"')
    return quoted or not CONTROL.search(value) or parsed.value() == value


def _is_sweep(arg: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_override(arg).is_sweep_override()
    except HydraException:
        return False


def quote_text_overrides(args: Sequence[str]) -> list[str]:
    """``args`` (without the program name) with each ``key=value`` that Hydra cannot read as
    typed (``prompt=循环``, ``prompt=it's``, ``stop=$'\\t'``) turned into ``key='value'``.

    Overrides Hydra reads are left alone, so sweeps, lists, ``null`` and interpolations keep
    their meaning. A value Hydra cannot read that also holds its syntax (a sweep's comma,
    brackets, ``${``) is ambiguous: it raises a :class:`ConfigError` showing the quoted form.
    """
    result: list[str] = []
    takes_value = False
    multirun = any(arg in ("-m", "--multirun") for arg in args)
    for arg in args:
        if takes_value or arg.startswith("-"):
            takes_value = arg in FLAGS_WITH_VALUES
            result.append(arg)
            continue
        key, sep, value = arg.partition("=")
        if key.lstrip("+~") in TEXT_OPTIONS:  # a path may hold any bytes; text must be UTF-8
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as err:  # undecodable bytes reach sys.argv as lone surrogates
                raise ConfigError(f"{key}= holds bytes that are not UTF-8 (at character {err.start}); pass UTF-8 text "
                                  "(prompt_file= and text_file= take a UTF-8 file)") from None
        if sep and not multirun and key.lstrip("+~") in TEXT_OPTIONS and _is_sweep(arg):
            raise ConfigError(f"{arg!r} is a sweep to Hydra (',' separates its values), which runs only with -m; "
                              f"if the value is text, quote it: {key}={quote_value(value)}")
        if sep and not _hydra_reads(arg, value):
            if HYDRA_SYNTAX.search(value):
                raise ConfigError(
                    f"Hydra cannot read {arg!r}: unquoted, it takes only ASCII letters, digits and a few signs, "
                    f"and ',', brackets and '${{' are its syntax; if the value is text, quote it: "
                    f"{key}={quote_value(value)} (in a sweep or list, quote each item: -m \"{key}='a','b'\")"
                )
            arg = f"{key}={quote_value(value)}"
        result.append(arg)
    return result


def quote_argv() -> None:
    """Apply :func:`quote_text_overrides` to ``sys.argv``; an ambiguous value is one ``error:`` line."""
    try:
        sys.argv[1:] = quote_text_overrides(sys.argv[1:])
    except RnnlmError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
