"""Command line: one thin module per workflow."""
