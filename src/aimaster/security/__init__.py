"""Security of a job's embedded etcd when it serves other hosts (``aimaster run --listen``).

- :mod:`aimaster.security.certs`: the job's CA and the certificates it issues (server, root, worker);
- :mod:`aimaster.security.etcd_auth`: etcd users and roles (root; a worker limited to the job's prefix);
- :mod:`aimaster.security.listen`: ``--listen``/``--advertise`` parsed and checked against this host;
- :mod:`aimaster.security.job_security`: all of it kept in the job's state directory, reused on resume;
- :mod:`aimaster.security.bundle`: the join bundle other hosts use.
"""
