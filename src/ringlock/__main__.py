"""`python -m ringlock` runs the `ringlock` command."""

from ringlock.cli.main import main

main()
