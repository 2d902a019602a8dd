"""How showers become network inputs and back: normalisation, conditions and loading.

``em``: cylindrical mesh, Par04/MetaHEP conditions; ``grid``: Cartesian grid (hadrons); ``base``: what both hand
the trainer.
"""
