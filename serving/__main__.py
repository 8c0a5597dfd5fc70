"""`python -m serving serve`: the container entrypoint without the console script."""

from serving.entrypoint import main

main()
