"""A real SLURM cluster on this machine, from Debian's packages (slurmctld slurmd slurm-client munge).

    python -m slurm.localcluster up     [--nodes N] [--link RATE] [--delay MS] [--state-dir DIR] [--net-id ID]
    python -m slurm.localcluster status [--state-dir DIR]
    python -m slurm.localcluster down   [--state-dir DIR]

--nodes 1 (the default) is the plain one-node cluster: munged, slurmctld and slurmd in this machine's
own network namespace, the node named after `hostname`, CPUs = nproc. The test suite's fixture uses it.
(`python slurm/localcluster.py ...`, the older spelling, runs the same code.)

--nodes N > 1 emulates N hosts: a bridge br<ID> at 10.<ID>.0.1/24 in the root namespace (slurmctld listens
there), and per node a network namespace lc<ID>n<K> joined to the bridge by a veth pair, address
10.<ID>.0.<10+K>, hostname nK (own UTS namespace), its own /etc/hosts (own mount namespace; bind mount)
listing every node, its own slurm.conf/mpi.conf (TmpFS and PMIxCliTmpDirBase per node, or PMIx temp dirs
collide in the shared /tmp). slurmd is started with `nsenter --net` + `unshare --uts --mount`, never
`ip netns exec` (that remounts /sys; slurmd then loses its cgroups and dies). Every node's egress is
shaped with tc: a token bucket for --link (e.g. 10gbit, 1gbit, 200mbit) and netem for --delay (one-way
ms), so each packet between two nodes crosses exactly one shaped link.

Tasks are bound to cores (TaskPlugin=task/affinity; `srun --cpu-bind=cores`). The emulated nodes share
this machine's cores, and task/affinity numbers a node's cores from the machine's topology, so node K
declares all of them and reserves (CpuSpecList) every core but its own block (cpus_per_node wide), and its
slurmd runs confined to that block (taskset): on 2 cores and 2 nodes, n1's tasks run on core 0 and n2's on
core 1, not both on core 0.

`up` is idempotent: daemons already running are kept; only missing pieces are (re)started; with the same
node count a new --link/--delay re-shapes the links in place. `down` cancels every job, stops every
process it started (by pid, after checking the pid is still that program), kills what remains inside its
namespaces, deletes namespaces, veths and the bridge, and removes the state dir. Everything it made is in
DIR/state.json. It must run as root: otherwise one line on stderr and exit 2.

After `up`:  export SLURM_CONF=DIR/etc/slurm.conf   (printed by `up`). Every task of every job gets
LOCALCLUSTER_NODES, LOCALCLUSTER_LINK (none | unlimited | the tc rate) and LOCALCLUSTER_DELAY_MS from a
TaskProlog, so a trainer can record the link it ran over. `status` exits 0 when every daemon runs and
every node is idle/allocated, 1 when degraded, 3 when nothing is up (`--json` for machines).
Exit codes: 2 = cannot run here (not root, packages or kernel features missing, bad arguments).
munged runs privately on DIR/munge/munge.socket (slurm.conf's AuthInfo), so a site's or another
cluster's munged is never touched; ports are picked free at first `up` and kept in the state.

Modules: processes (run, spawn, find and stop processes), state (DIR/state.json), config (slurm.conf and the
files beside it), network (bridge, namespaces, tc), daemons (munged, slurmctld, slurmd), cli (up/status/down).
"""
