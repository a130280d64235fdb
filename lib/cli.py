"""The command-line layer every script shares: one ``error: ...`` line and an exit status
instead of a traceback, ``-h`` / ``--help`` for the ``key=value`` scripts, generated from the
config schema, and ``--debug`` (or ``CLEWS_DEBUG=1``) for the traceback of an expected error.

Exit status: see EXIT_STATUS (1 for an ``errors.RunError`` or a failed peer process, 2 for an
``errors.UsageError``).
"""

import os
import sys

from lib import registry, schema
from lib.errors import RunError, UsageError

# what a gloo collective says when another process of the run has died
PEER_FAILURE_SIGNS = ("Connection closed by peer", "Connection reset by peer")
HELP_FLAGS = ("-h", "--help")
EXIT_STATUS = (
    "Exit status: 0 done, 1 the run could not do what was asked (bad data, file or checkpoint),\n"
    "2 wrong arguments or config, 130 interrupted. --debug (or CLEWS_DEBUG=1) shows the\n"
    "traceback of an error."
)


def original_message(err):
    """The message of an error raised in a DataLoader worker, without the worker's traceback
    that the DataLoader puts in front of it when re-raising it in the main process."""
    text = str(err)
    if "Original Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    prefix = f"{type(err).__module__}.{type(err).__name__}: "
    return last[len(prefix) :] if last.startswith(prefix) else last


def peer_failure(err):
    """True for the error raised in this process by a collective whose peer process died: the
    peer's own error is the one to read."""
    return isinstance(err, RuntimeError) and any(sign in str(err) for sign in PEER_FAILURE_SIGNS)


def debugging(argv):
    return "--debug" in argv or os.environ.get("CLEWS_DEBUG", "") not in ("", "0")


def run(main, argv=None, help_text=None):
    """``main(argv)``'s exit status, with the errors it expects as one ``error:`` line on
    stderr. ``help_text()``, when given, answers ``-h`` / ``--help``. ``--debug`` is taken out
    of ``argv`` and lets every exception through with its traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = debugging(argv)
    argv = [arg for arg in argv if arg != "--debug"]
    if help_text is not None and any(arg in HELP_FLAGS for arg in argv):
        try:
            print(help_text())
        except BrokenPipeError:  # e.g. piped into head
            pass
        return 0
    if debug:
        return main(argv)
    try:
        return main(argv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RunError as err:
        print(f"error: {original_message(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: what was finished is kept; run the command again to continue",
              file=sys.stderr)
        return 130
    except RuntimeError as err:
        if not peer_failure(err):
            raise
        print(
            "error: another process of this run failed (its error is above); stopping this one too",
            file=sys.stderr,
        )
        return 1


###################################################################################################
# --help of the key=value scripts


def key_table(rows):
    """Aligned lines 'key  type  default  meaning' of ``schema.help_rows`` rows."""
    width_key = max(len(r[0]) for r in rows) + 2
    width_type = max(len(r[1]) for r in rows) + 2
    width_default = min(max(len(r[2]) for r in rows), 24) + 2
    return "\n".join(
        f"  {k:<{width_key}}{t:<{width_type}}{d:<{width_default}}{h}".rstrip()
        for k, t, d, h in rows
    )


def train_help(usage, about):
    """train.py's --help: every key of a training config, each model's own section after."""
    parts = [
        f"usage: {usage}",
        "",
        about,
        "",
        "Keys (key=value overrides of the YAML given as conf=; type, default, meaning):",
        key_table([r for r in schema.help_rows(schema.TrainConfig) if r[0] != "model"]),
    ]
    for name in registry.available_models():
        parts += ["", f"model.* of model.name={name}:"]
        parts.append(key_table(schema.help_rows(registry.model_class(name).Config, "model.")))
    parts += ["", EXIT_STATUS]
    return "\n".join(parts)


def arguments_help(usage, about, section):
    """--help of a script whose key=value arguments are the schema dataclass ``section``."""
    return "\n".join(
        [
            f"usage: {usage}",
            "",
            about,
            "",
            "Arguments (key=value; type, default, meaning):",
            key_table(schema.help_rows(section)),
            "",
            EXIT_STATUS,
        ]
    )
