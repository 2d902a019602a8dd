"""Workflow 5: Belle II selective background simulation.

A network reads only generator-level information (the MCParticles and the decay string) and predicts
whether an event will pass the analysis skim after the expensive detector simulation and
reconstruction, so only events that matter are simulated.  The road, every arrow a file:

``produce`` (decay_table, generator, detector, ecl) -> events HDF5 (particles + labelled events)
-> ``preprocess`` -> .npy per input type -> ``memmaps`` -> one memmap per input type
-> ``train`` (models/: NNBaseClass plug-ins) -> checkpoint -> ``apply`` (threshold or weighted sampling)
-> kept list + weights -> ``evaluate`` (ROC/AUC, measured speed-up, bias of the filtered samples).
"""
