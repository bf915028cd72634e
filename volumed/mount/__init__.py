"""The mount: an encrypted volume served as one file over FUSE, cut off when its key is revoked.

The layer above volumed.snapshot (docs/ARCHITECTURE.md, "Import layers"). Modules, one concern each:
  paths      where the daemon keeps its run-time files (/run/volumed) and persisted state
  errno_map  the one place domain errors become errno values (the FUSE boundary)
  latch      the mount's access state (available, kms-unreachable, revoked, terminal) and its record
  fs         the pyfuse3 Operations: one regular file, named after the EBS id
  engine     which request engine serves the FUSE requests (native threads or pyfuse3)
  keyservice key-service clients for the user and the host, and how an error is classified
  attach     the EBS attach flow: DescribeKey + CreateGrant as the user, RetireGrant as the host
  monitor    the key-access monitor (a trio task)
  protocol   the control channel's messages: a type per request and reply, error codes
  control    the root-only unix-socket control channel: the server and ControlClient
  daemon     the daemon's lifecycle: open, serve, monitor, unmount, clean up
  client     what the CLI uses: start a daemon and wait until ready, unmount, status
  snapshots  a mounted volume's snapshot, the user's side (the daemon copies)
  tuning     FUSE connection settings for throughput (read-ahead, background-request limit)
  nullserve  the benchmark-only null-cipher mount (serves a plain file, never a volume)
  faults     fault injection for --allow-faults mounts: errno rules, bad sectors, latency,
             power cut and sector rollback (FaultBacking, FaultVolume)
  throttle   the EBS volume-type model (gp3, io2, gp2 burst credits) as token buckets
The mount(8) helper (mount -t fuse.volumed, /etc/fstab) runs the CLI and lives beside it:
volumed.cli.mount_helper.
"""
