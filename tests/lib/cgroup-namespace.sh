# Sourced by the scripts that run another Slurm release's cluster beside the host's
# (tests/slurm24/smoke, tests/slurm26/cluster): gives that cluster a cgroup namespace of
# its own, rooted at a NAME folder of each cgroup v1 hierarchy below this process's own
# cgroup there. Slurm's cgroups (proctrack/cgroup, task/cgroup) and ferry's
# (`ferry-image-cache`, which `ferry cache drop --all` sweeps) then stay apart from the
# host cluster's and the host ferry's.
#   cgroup_subtrees NAME    makes the folders (cpuset gets its parent's cpus and mems);
#                           prints their paths, one a line
#   cgroup_join FILE        moves this process into the folders listed in FILE; then
#                           `unshare --cgroup` makes them the namespace's root
#   cgroup_mount_fresh      inside the new mount and cgroup namespaces: /sys/fs/cgroup
#                           afresh, each hierarchy showing the namespace's root only
#   cgroup_leave FILE       moves this process back to the parents of those folders
#   cgroup_remove FILE      removes the folders listed in FILE once they are empty
# The hierarchies used (cpu and others stay the host's view, which Slurm does not use);
# Slurm 24.11 also looks for systemd's named hierarchy to tell cgroup v1.
CGROUP_HIERARCHIES=(freezer cpuset memory devices cpuacct systemd)

# How hierarchy $1 is named in /proc/self/cgroup and in mount options.
cgroup_name() { if [ "$1" = systemd ]; then echo name=systemd; else echo "$1"; fi; }
# The cgroup, in hierarchy $1, that this process is in (cgroup v1 /proc/self/cgroup).
cgroup_own() { awk -F: -v c="$(cgroup_name "$1")" '{ n = split($2, a, ","); for (i = 1; i <= n; i++) if (a[i] == c) print $3 }' /proc/self/cgroup; }

cgroup_subtrees() {
    local c dir own
    for c in "${CGROUP_HIERARCHIES[@]}"; do
        [ -d "/sys/fs/cgroup/$c" ] || { echo "no cgroup v1 hierarchy /sys/fs/cgroup/$c" >&2; return 1; }
        own=$(cgroup_own "$c")
        dir=/sys/fs/cgroup/$c${own%/}/$1
        mkdir -p "$dir"
        if [ "$c" = cpuset ]; then
            cat "$(dirname "$dir")/cpuset.cpus" >"$dir/cpuset.cpus"
            cat "$(dirname "$dir")/cpuset.mems" >"$dir/cpuset.mems"
        fi
        echo "$dir"
    done
}

cgroup_join() {
    local dir
    while read -r dir; do echo $$ >"$dir/cgroup.procs"; done <"$1"
}

cgroup_leave() {
    local dir
    while read -r dir; do echo $$ >"$(dirname "$dir")/cgroup.procs"; done <"$1"
}

cgroup_mount_fresh() {
    local c
    umount -l /sys/fs/cgroup
    mount -t tmpfs -o mode=0755 cgroup /sys/fs/cgroup
    for c in "${CGROUP_HIERARCHIES[@]}"; do
        mkdir -p "/sys/fs/cgroup/$c"
        if [ "$c" = systemd ]; then
            mount -t cgroup -o none,name=systemd cgroup "/sys/fs/cgroup/$c" || return 1
        else
            mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c" || return 1
        fi
    done
}

cgroup_remove() {
    local dir
    [ -e "$1" ] || return 0
    while read -r dir; do
        [ -d "$dir" ] && find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done <"$1"
}
