"""msearchctl: the command line of msearchd."""
