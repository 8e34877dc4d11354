//! `caracal-all`: every Caracal binary in one, chosen by the name it is started as (the
//! container image links `caracal`, `caracal-api`, ... to it).

fn main() -> std::process::ExitCode {
    caracal_bin::multicall()
}
