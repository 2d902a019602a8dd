"""mlfastsim: machine-learning fast simulation for particle physics, from one CLI and one YAML per experiment."""

__version__ = "0.1.0"
