"""Metric probes: each reads from a root it is given and returns a typed record.

Every probe takes the root it reads from (``proc_root``, ``sys_root``, log paths, a journal directory)
so tests can feed fixture trees, never runs a shell (``journal`` runs ``journalctl`` from a fixed path
with a fixed argv), and never raises for a missing or unreadable source: it returns ``None`` values (or
a reason string) with the reason instead. Non-Linux hosts take psutil's path.

- ``temperature``: hottest CPU sensor from ``/sys/class/hwmon`` and ``/sys/class/thermal``, with limits
- ``cpu``: utilisation between readings of ``/proc/stat`` (:class:`~secure_agent.probes.cpu.CpuSampler`)
- ``load``, ``memory``, ``disk``: ``/proc/loadavg``, ``/proc/meminfo``, ``/proc/mounts`` + statvfs
- ``processes``: executables in world-writable directories, deleted or missing
- ``network``: sockets on suspicious ports and unexpected listeners (``/proc/net/*`` + fd links)
- ``authlog`` (line parser), ``logfollow`` (incremental reader), ``journal`` (sshd's entries in the
  systemd journal, by cursor), ``ssh`` (failure window over one source): SSH brute force
- ``acknowledge``: known findings an operator accepted (``security.acknowledged_findings``)
- ``findings``: the finding record, ATT&CK mapping and threat level; ``security``: one scan of all three
- ``_fs``, ``_text``: bounded reads; cleaning hostile text and fitting numbers to XML-RPC
"""
