"""SLURM: the `slurm` section's schema (`schema`) and the launcher that submits a run's
stages as batch jobs (`launcher`, `clup run --launcher slurm`).

Nothing is imported here, so that the experiment schema can import `clup.slurm.schema`
without the launcher and the training stack it imports.
"""
