"""Putting a job on the engines users already have (see docs/engines.md).

The engine places and restarts processes; aimaster's master keeps owning the slices, slow and hung
workers, the fault policy and the end of the job.

- :mod:`aimaster.engines.k8s_manifests`: the Kubernetes objects of one job (``aimaster k8s render``);
- :mod:`aimaster.engines.k8s_tls`: the job's TLS material and join bundle, made before the job starts;
- :mod:`aimaster.engines.k8s_ready`: the master pod's readiness (its etcd holds the job);
- :mod:`aimaster.engines.k8s_client`: applying, inspecting and deleting them (``submit``/``status``/``delete``);
- :mod:`aimaster.engines.slurm_script`: a ready ``sbatch`` script (``aimaster slurm script``);
- :mod:`aimaster.engines.commands`: the ``aimaster k8s`` and ``aimaster slurm`` command groups.
"""
