"""``python -m mlfastsim`` is the same as the ``mlfastsim`` command."""

from mlfastsim.cli.main import main

main()
