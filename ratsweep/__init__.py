"""ratsweep: Ray Tune sweeps of rational vs fixed activations."""

__version__ = "0.1.0"
