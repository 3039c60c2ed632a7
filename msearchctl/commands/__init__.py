"""The command groups of msearchctl, one module each; `tasks` is three modules, merged in `msearchctl.app`."""
