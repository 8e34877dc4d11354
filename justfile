# Developer shortcuts. Each recipe is one plain command, so nothing here needs `just` itself.

# Start the platform locally (PostgreSQL, Redis and every service under .caracal/).
up:
    cargo build --bins && target/debug/caracal up

# Stop it (add -v by hand to delete the data).
down:
    target/debug/caracal down

# Every service's readiness ladder.
status:
    target/debug/caracal status --ready

# Run every test (real PostgreSQL and Redis are started by the testkit).
test:
    cargo test --workspace

# Formatting and lints, as CI runs them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Every benchmark (the probe one needs wrk); figures go in docs/benchmarks.md.
bench:
    cargo bench -p caracal-core --bench probes
    cargo bench -p caracal-bin --bench pipeline
    cargo bench -p caracal-bin --bench prober
    cargo bench -p caracal-sts --bench tokens
    cargo bench -p caracal-gateway --bench federation

# The chart's tests (Helm SDK, schemas, promtool, a real Prometheus); .ci/run prepares the tools.
chart:
    PATH=$PWD/target/py-tools/venv/bin:$PATH target/py-tools/venv/bin/pytest -q tests/chart

# The smoke test against a running platform.
smoke:
    bash infra/scripts/smokeTest.sh

# What CI runs on a fresh machine.
ci:
    bash .ci/run

# The container image (FROM scratch, no network): ghcr.io/caracal/caracal:<version>.
image:
    bash infra/docker/build-image.sh
