"""The ``recsys-jax`` command line: each subcommand parses its arguments and calls what
Python callers also have (`recsys_jax.cli.main.main`)."""
