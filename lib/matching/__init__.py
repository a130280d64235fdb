"""Matching clips against a catalogue: the Python API (``api``), the catalogue and its search,
the calibrated decision, the embeddings of audio files and the web page."""
