#!/usr/bin/env bash
# Runs every memtide test: formatting and lints, unit and property tests, and the integration
# tests that boot real Linux guests (on hardware KVM, or on the emulated KVM host).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
