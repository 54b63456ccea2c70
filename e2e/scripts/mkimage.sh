#!/usr/bin/env bash
# mkimage.sh ROOTFS OUT.tar ENTRYPOINT_JSON CMD_JSON TAG... — packs a directory into a one-layer
# docker-archive that `ctr images import` accepts, with tar and sha256sum only (no Docker here).
# The archive is reproducible: sorted names, fixed owner and mtime.
set -euo pipefail
rootfs=$1 out=$2 entrypoint=$3 cmd=$4; shift 4
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$rootfs" -cf "$work/layer.tar" .
layer=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
mkdir "$work/$layer"; mv "$work/layer.tar" "$work/$layer/layer.tar"
cat >"$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z",
 "config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":$entrypoint,"Cmd":$cmd,"WorkingDir":"/"},
 "rootfs":{"type":"layers","diff_ids":["sha256:$layer"]}}
JSON
config=$(sha256sum "$work/config.json" | cut -d' ' -f1)
mv "$work/config.json" "$work/$config.json"
tags=$(printf '"%s",' "$@"); tags=${tags%,}
printf '[{"Config":"%s.json","RepoTags":[%s],"Layers":["%s/layer.tar"]}]' "$config" "$tags" "$layer" >"$work/manifest.json"
tar -C "$work" -cf "$out.tmp" manifest.json "$config.json" "$layer"
mv "$out.tmp" "$out"
