"""`python -m ringlock.cli` runs the `ringlock` command."""

from ringlock.cli.main import main

main()
