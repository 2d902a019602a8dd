"""Calorimeter showers: geometry, reference simulators, formats, validation and generative models."""
