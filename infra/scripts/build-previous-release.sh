#!/usr/bin/env bash
# Builds the previous release (named in releases.toml) for the rolling-upgrade test: its source
# from git, built in a target directory of its own under target/previous-release, so nothing of
# this tree's build is touched. The binary is the multi-call `caracal-all`, linked under every
# service's name. A second run with the same commit does nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."
commit=$(sed -n 's/^commit = "\([0-9a-f]*\)"/\1/p' releases.toml | head -1)
out=target/previous-release
if [ -x "$out/bin/caracal-all" ] && [ "$(cat "$out/bin/commit" 2>/dev/null)" = "$commit" ]; then
  exit 0
fi
# A shallow clone lacks the commit: fetch the history from where the clone came from.
if ! git cat-file -e "$commit^{commit}" 2>/dev/null && [ "$(git rev-parse --is-shallow-repository)" = true ]; then
  git fetch --quiet --unshallow || true
fi
if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
  echo "build-previous-release: commit $commit (releases.toml) is not in this clone's history; a shallow clone needs \`git fetch --unshallow\`" >&2
  exit 1
fi
echo "build-previous-release: building $commit into $out" >&2
rm -rf "$out/src" "$out/bin"
mkdir -p "$out/src" "$out/bin"
# Extracted with the time of extraction (-m), not the commit's: cargo judges freshness by mtime,
# and a source older than an earlier build's outputs would keep that build.
git archive "$commit" | tar -x -m -C "$out/src"
# No debug info: the test only runs it, and it links faster.
CARGO_TARGET_DIR="$PWD/$out/target" CARGO_PROFILE_DEV_DEBUG=0 \
  cargo build --locked --quiet --manifest-path "$out/src/Cargo.toml" -p caracal-bin --bin caracal-all
cp "$out/target/debug/caracal-all" "$out/bin/caracal-all"
for name in caracal caracal-api caracal-coordinator caracal-audit caracal-sts caracal-gateway caracal-control; do
  ln -sf caracal-all "$out/bin/$name"
done
echo "$commit" >"$out/bin/commit"
