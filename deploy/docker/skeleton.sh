#!/bin/sh
# Writes into DEST (default /skeleton) the workspace's manifests with a stub for each of
# their sources that decides which targets exist (src/lib.rs, src/main.rs, build.rs and
# every `path = "...rs"` or `build = "...rs"` a manifest names), so that a Docker layer can
# build every dependency before any real source is copied. Which crates there are is read
# from the tree, so a new member needs no change here. Run from the workspace root.
set -eu
dest="${1:-/skeleton}"
mkdir -p "$dest"
cp Cargo.toml Cargo.lock "$dest/"
stub='#![allow(dead_code)] fn main() {}'
find . \( -path ./target -o -path ./.data -o -path ./.git \) -prune -o -name Cargo.toml -print | sort |
while read -r manifest; do
    dir=$(dirname "$manifest")
    mkdir -p "$dest/$dir"
    cp "$manifest" "$dest/$manifest"
    {
        for file in src/lib.rs src/main.rs build.rs; do
            [ -f "$dir/$file" ] && echo "$file"
        done
        sed -nE 's/^[[:space:]]*(path|build)[[:space:]]*=[[:space:]]*"([^"]+\.rs)".*/\2/p' "$manifest"
    } | sort -u | while read -r file; do
        mkdir -p "$(dirname "$dest/$dir/$file")"
        echo "$stub" > "$dest/$dir/$file"
    done
done
