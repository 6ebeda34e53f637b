"""What the command-line modules share: the consoles, common options, error handling.

Used by ``cli.py`` and by the command modules it registers (``ingest/command.py``); engine
modules never import it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from chatwright.errors import ChatwrightError, UserError

__all__ = ["ConfigOpt", "DataDirOpt", "UserOpt", "err", "handles_errors", "out"]

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Where the data lives \\[env: CHATWRIGHT_DATA_DIR]."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file \\[default: ./chatwright.toml]."),
]
UserOpt = Annotated[
    str | None, typer.Option("--user", help="Whose data to use \\[env: CHATWRIGHT_USER].")
]

F = TypeVar("F", bound=Callable[..., Any])


def handles_errors(interrupted: str = "interrupted") -> Callable[[F], F]:
    """Chatwright errors become a message (and hint) with exit code 2 for caller mistakes, 1
    otherwise; Ctrl-C prints ``interrupted`` and exits 130. Never a traceback."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except ChatwrightError as e:
                # Messages and hints are plain text: `pip install "x[local]"` must not be
                # read as Rich markup.
                err.print(Text.assemble(("error: ", "bold red"), e.message))
                if e.hint:
                    err.print(Text.assemble(("hint: ", "dim"), e.hint))
                raise typer.Exit(2 if isinstance(e, UserError) else 1) from None
            except KeyboardInterrupt:
                err.print(interrupted)
                raise typer.Exit(130) from None

        return wrapper  # type: ignore[return-value]

    return decorate
