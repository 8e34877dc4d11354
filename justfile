# Developer shortcuts. Each recipe is one plain command, so nothing here needs `just` itself.

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

# The example service on caracal-core (needs DATABASE_URL and REDIS_URL).
example:
    cargo run -p caracal-core --example service

# What CI runs on a fresh machine.
ci:
    bash .ci/run
