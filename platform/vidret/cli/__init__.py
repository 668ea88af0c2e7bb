"""The ``vidret`` command line (``cli/main.py``): argument parsing, one handler per subcommand
(``cli/commands.py``, ``cli/search.py``), and what each command is for (``cli/spec.py``)."""

from vidret.cli.common import EXIT_ERROR, EXIT_USAGE, write_resolved_config
from vidret.cli.main import build_parser, main, main_entry

__all__ = ["EXIT_ERROR", "EXIT_USAGE", "build_parser", "main", "main_entry", "write_resolved_config"]
