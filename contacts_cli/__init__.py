"""The `contacts` command: tools for people, one subcommand a module of this package.

A subcommand is a module here (not starting with ``_``) with ``HELP`` (one line for
``contacts --help``), ``add_arguments(parser)`` and ``run(args) -> int`` (the exit code);
adding a module adds the subcommand. Subcommands that talk to the service do it over HTTP
(``--url``, ``--token``); those that talk to Kafka take ``--brokers``.
"""
