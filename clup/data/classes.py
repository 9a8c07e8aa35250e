"""The class names every dataset of facial expressions is read in."""

CANONICAL_CLASSES = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")
"""The seven basic expressions, in the order of the labels the raw readers and the synthetic
benchmark write (0 is Surprise); an experiment's default `classes`."""
