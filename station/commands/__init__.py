"""One module per `station` subcommand; each exposes `register(subparsers)`. Discovered by `station.cli`."""
