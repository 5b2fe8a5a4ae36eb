#!/usr/bin/env bash
# Builds the .deb with cargo-deb (metadata: [package.metadata.deb] in Cargo.toml) and prints its
# path. The man pages, completions, schema and the unit with /usr/bin in ExecStart are generated
# by the binary just built (into target/deb-assets/), so the package cannot ship stale ones.
#   scripts/build-deb.sh [PROFILE]    PROFILE: release (default), or deb-test (CI: the debug build)
# Installs cargo-deb first (cargo install --locked) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-release}"

if ! command -v cargo-deb > /dev/null; then
    cargo install cargo-deb --locked
fi
target_dir="${CARGO_TARGET_DIR:-target}"
if [ "$profile" = deb-test ]; then
    # CI's package tests the packaging, not the optimizer: it takes the debug build the test
    # suite has just made (no second compilation of every crate, minutes on two cores), under
    # the name of a profile cargo-deb accepts (it refuses `dev`).
    # `cargo test` (which .ci/run has just run) builds the binary with the dev-dependencies'
    # features unified in; a `cargo build` would compile much of the tree again without them.
    if [ ! -x "$target_dir/debug/tickd" ]; then
        cargo build --locked --bin tickd >&2
    fi
    mkdir -p "$target_dir/deb-test"
    cp "$target_dir/debug/tickd" "$target_dir/deb-test/tickd"
else
    cargo build --locked --profile "$profile" --bin tickd >&2
fi
tickd="$target_dir/$profile/tickd"

assets=target/deb-assets
rm -rf "$assets"
mkdir -p "$assets/man"
"$tickd" man --out-dir "$assets/man"
gzip -9n "$assets"/man/*.1
"$tickd" completions bash > "$assets/tickd.bash"
"$tickd" completions zsh > "$assets/_tickd"
"$tickd" completions fish > "$assets/tickd.fish"
"$tickd" schema > "$assets/jobs.schema.json"
# Debian installs programs in /usr/bin; the contrib unit points at /usr/local/bin (cargo install).
sed 's#^ExecStart=/usr/local/bin/tickd #ExecStart=/usr/bin/tickd #' contrib/systemd/tickd.service \
    > "$assets/tickd.service"
grep -q '^ExecStart=/usr/bin/tickd ' "$assets/tickd.service"

# cargo-deb prints the package's path on stdout.
cargo deb --no-build --profile "$profile"
