#!/usr/bin/env bash
# Install and start a one-node SLURM cluster on this machine (Debian/Ubuntu, run as root).
#
# Used to test `cptrain dedup` with executor.kind = "slurm" for real: munge + slurmctld + slurmd on
# localhost, one partition "debug" holding this node with all its CPUs. No systemd needed (daemons
# are started directly), so it also works in containers and CI VMs. Safe to run again: it rewrites
# the config and restarts only the daemons it started before (pid files under /run/cptrain-slurm).
#
#   sudo scripts/local_slurm.sh          # install (if needed), configure, start, wait until idle
#   sudo scripts/local_slurm.sh stop     # stop the daemons this script started
set -euo pipefail

PID_DIR=/run/cptrain-slurm
CONF_DIR=/etc/slurm
NODE=$(hostname -s)

stop_daemons() {
  for name in slurmd slurmctld munged; do
    if [[ -f "$PID_DIR/$name.pid" ]]; then
      pid=$(cat "$PID_DIR/$name.pid")
      if kill -0 "$pid" 2>/dev/null; then kill "$pid"; fi
      rm -f "$PID_DIR/$name.pid"
    fi
  done
  sleep 1
}

if [[ "${1:-}" == "stop" ]]; then
  stop_daemons
  echo "local SLURM stopped"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "local_slurm.sh: run as root (it installs packages and starts daemons)" >&2
  exit 1
fi

start=$(date +%s)
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends slurm-wlm munge
fi
installed=$(date +%s)

stop_daemons
mkdir -p "$PID_DIR" "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
chown slurm:slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm 2>/dev/null || true

# munge: one key shared by controller and node (same machine here)
if [[ ! -s /etc/munge/munge.key ]]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
sudo_munge() { if command -v runuser >/dev/null; then runuser -u munge -- "$@"; else su -s /bin/sh munge -c "$*"; fi; }
sudo_munge /usr/sbin/munged --force
sleep 1
pgrep -u munge -n munged >"$PID_DIR/munged.pid"

CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
cat >"$CONF_DIR/slurm.conf" <<EOF
# written by cptrain scripts/local_slurm.sh: one-node test cluster
ClusterName=cptrain-local
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$PID_DIR/slurmctld.pid
SlurmdPidFile=$PID_DIR/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# no cgroups in containers / firecracker VMs: track processes by pid, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
MinJobAge=300
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
# SLURM >= 23.02 can run without cgroups; older ones (Debian 12 ships 22.05) autodetect cgroup v1/v2
version=$(slurmd -V | awk '{print $2}')
if [[ "$(printf '%s\n' 23.02 "$version" | sort -V | head -1)" == 23.02 ]]; then
  printf 'CgroupPlugin=disabled\n' >"$CONF_DIR/cgroup.conf"
else
  rm -f "$CONF_DIR/cgroup.conf"
fi

/usr/sbin/slurmctld
/usr/sbin/slurmd

# wait until the node accepts jobs
for _ in $(seq 1 60); do
  state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
  if [[ "$state" == idle* || "$state" == mixed* ]]; then break; fi
  sleep 1
done
state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
if [[ "$state" != idle* && "$state" != mixed* ]]; then
  scontrol update nodename="$NODE" state=resume 2>/dev/null || true
  sleep 2
  state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
fi
end=$(date +%s)
echo "local SLURM on $NODE: state=$state cpus=$CPUS mem=${MEM_MB}MB" \
  "(install $((installed - start))s, start $((end - installed))s, total $((end - start))s)"
[[ "$state" == idle* || "$state" == mixed* ]]
