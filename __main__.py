"""`python -m bnncost` runs the command line."""

from bnncost.cli import main

main()
