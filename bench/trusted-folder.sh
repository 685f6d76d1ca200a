# Sourced by the benches that compare a trusted image (kernel) with the user's own
# (squashfuse): a root-only folder the node's plugin trusts for the run.
#
#   trusted_folder_start     sets $trusted (a new folder under /var/lib) and makes the
#                            plugstack line name a site file that trusts it (with the
#                            node image cache off: every step mounts afresh)
#   trusted_site_cache TTL   the same site file with image_cache_ttl TTL (0: off)
#   trusted_folder_stop      restores the plugstack line and removes the folder
#   plugin_line_restore      the plugstack line as before, the folder kept
#   plugin_line_trusting     the line naming the site file again
# Needs die() from the caller. New steps read plugstack.conf: no restart.

PLUGIN_CONF=/etc/slurm/plugstack.conf.d/ferry.conf

trusted_folder_start() {
    [ -f "$PLUGIN_CONF" ] || die "the ferry plugin is not installed (deploy/install)"
    grep -q 'site_config=' "$PLUGIN_CONF" &&
        die "$PLUGIN_CONF already names a site_config; the bench sets its own (remove it for the run)"
    trusted=$(mktemp -d /var/lib/ferry-bench-trusted.XXXXXX)
    chmod 0755 "$trusted"
    cp -p "$PLUGIN_CONF" "$trusted/ferry.conf.orig"
    trusted_site_cache 0
    plugin_line_trusting
}

# The site file with the node image cache's image_cache_ttl at $1: "0" (the default
# of the benches: every step mounts its image afresh, as a first job on a node does)
# or a time ("10m": a step takes the mount an earlier one kept). Steps read it anew.
trusted_site_cache() {
    printf '{"trusted_image_dirs": ["%s"], "untrusted_images": "fuse", "image_cache_ttl": "%s"}\n' \
        "$trusted" "$1" >"$trusted/site.json"
}

plugin_line_trusting() {
    sed "s#^\([[:space:]]*\(required\|optional\)[[:space:]].*ferry\.so.*\)\$#\1 site_config=$trusted/site.json#" \
        "$trusted/ferry.conf.orig" >"$PLUGIN_CONF.bench"
    mv "$PLUGIN_CONF.bench" "$PLUGIN_CONF"
    grep -q "site_config=$trusted/site.json" "$PLUGIN_CONF" || die "could not add site_config= to $PLUGIN_CONF"
}

plugin_line_restore() {
    [ -n "${trusted:-}" ] && [ -f "$trusted/ferry.conf.orig" ] || return 0
    cp -p "$trusted/ferry.conf.orig" "$PLUGIN_CONF.bench" && mv "$PLUGIN_CONF.bench" "$PLUGIN_CONF"
}

trusted_folder_stop() {
    plugin_line_restore
    [ -z "${trusted:-}" ] || rm -rf "$trusted"
}
