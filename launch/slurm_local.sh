#!/usr/bin/env bash
# Start a real two-node SLURM on this one machine (controller + two slurmd on loopback),
# for tests and local trials. Follows shared/slurm-local.md (Debian's slurm-wlm + munge).
#
# Idempotent: daemons already running are left alone; safe to re-run at any time.
# Never fails the caller: when SLURM cannot be started here (not root, packages missing,
# a slurm.conf this script did not write) it says why and exits 0; callers check `sinfo`.
set -u

say() { echo "slurm_local: $*"; }

if [ "$(id -u)" != 0 ]; then
    say "not root, cannot start SLURM daemons (run as root, or use a cluster's SLURM)"; exit 0
fi
for bin in slurmctld slurmd munged sinfo scontrol; do
    if ! command -v "$bin" >/dev/null 2>&1; then
        say "$bin not found (apt-get install -y --no-install-recommends slurm-wlm munge)"; exit 0
    fi
done

CONF=/etc/slurm/slurm.conf
MARK="# written by rmt-dist launch/slurm_local.sh"
# A real cluster's slurm.conf is never ours to replace.
if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    say "$CONF exists and was not written by this script; leaving it (and SLURM) alone"; exit 0
fi

alive() { [ -f "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }

H=$(hostname -s)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd/n1 /var/spool/slurmd/n2 /var/log/slurm /run/munge
NEW_CONF=$(cat <<CONF
$MARK
ClusterName=local
SlurmctldHost=$H
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmdSpoolDir=/var/spool/slurmd/%n
StateSaveLocation=/var/spool/slurmctld
SlurmUser=root
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
JobCompType=jobcomp/none
NodeName=n1 NodeHostname=$H NodeAddr=127.0.0.1 Port=17001 CPUs=1 RealMemory=8000 State=UNKNOWN
NodeName=n2 NodeHostname=$H NodeAddr=127.0.0.1 Port=17002 CPUs=1 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
CONF
)
# Rewrite only when it changed, so running daemons never see their config move under them.
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$NEW_CONF" ]; then
    printf '%s\n' "$NEW_CONF" > "$CONF"
fi
grep -qE '^127\.0\.0\.1.* n1( |$)' /etc/hosts || echo "127.0.0.1 n1 n2" >> /etc/hosts  # node names must resolve

if [ ! -f /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
fi
chown munge:munge /run/munge
alive /run/munge/munged.pid || su -s /bin/sh munge -c munged || { say "munged failed to start"; exit 0; }
alive /run/slurmctld.pid || slurmctld || { say "slurmctld failed to start (see /var/log/slurm/slurmctld.log)"; exit 0; }
for n in n1 n2; do
    alive "/run/slurmd-$n.pid" || slurmd -N "$n" || { say "slurmd -N $n failed (see /var/log/slurm/slurmd-$n.log)"; exit 0; }
done

# Wait for both nodes to register; bring back nodes a previous session left down.
for _ in $(seq 1 60); do
    states=$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u)
    if [ "$(echo "$states" | grep -cE ' (idle|mixed|allocated|completing)$')" -ge 2 ]; then
        say "up: $(echo "$states" | tr '\n' ' ')"; exit 0
    fi
    if echo "$states" | grep -qE ' (down|drained|draining)'; then
        scontrol update NodeName=n1,n2 State=RESUME >/dev/null 2>&1 || true
    fi
    sleep 0.5
done
say "daemons started but nodes are not idle after 30 s: $(echo "$states" | tr '\n' ' ') (see /var/log/slurm/)"
exit 0
