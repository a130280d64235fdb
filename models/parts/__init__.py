"""Pieces that only the models of ``models/`` use: losses and the Conformer."""
