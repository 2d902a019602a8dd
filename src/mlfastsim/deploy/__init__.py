"""Deployment helpers: the Kubeflow Pipelines definition of the showers road (``mlfastsim deploy kubeflow``).

The Slurm and Kubernetes templates live in the repository's ``deploy/`` directory; this package holds only
what the command line compiles.
"""
