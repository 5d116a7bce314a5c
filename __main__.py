"""`python -m maskednas ARGS` is the `maskednas` command."""
from maskednas.cli import main

main()
