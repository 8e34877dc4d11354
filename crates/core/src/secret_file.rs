//! Secret files must be private: outside `dev`, a bearer, token, password or key file that
//! others could read is a start-up error naming the file and its mode (as ssh and PostgreSQL
//! refuse a private key others can read).
//!
//! The rule is PostgreSQL's for its TLS key: a file owned by the service's own user may allow
//! nothing to its group or others (`0600` or less); a file owned by root may also let its
//! group read it (`0640` or less) — which is how Kubernetes mounts a Secret (root-owned, group
//! the pod's `fsGroup`, `defaultMode: 0440`). Anything else, or another owner, is refused.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::config::Mode;

/// Checks that `path` is private enough for a secret in `mode` (anything goes in `dev`).
///
/// # Errors
/// A message naming the file, its mode and owner, and the fix.
pub fn check(path: &Path, mode: Mode) -> Result<(), String> {
    if mode == Mode::Dev {
        return Ok(());
    }
    let shown = path.display();
    let metadata = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let bits = metadata.mode() & 0o777;
    let owner = metadata.uid();
    let me = nix::unistd::geteuid().as_raw();
    let allowed = match owner {
        o if o == me => 0o600,
        0 => 0o640,
        _ => {
            return Err(format!(
                "{shown} belongs to user {owner}, not to this service's user ({me}) or root; a secret file must be the service's own"
            ));
        }
    };
    if bits & !allowed != 0 {
        let most = if allowed == 0o640 { "0640 when root owns it" } else { "0600" };
        return Err(format!(
            "{shown} has mode {bits:04o}: others can read it; a secret file is {most} at most (`chmod {allowed:04o} {shown}`)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn file(mode: u32) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "token").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        (dir, path)
    }

    #[test]
    fn a_private_file_passes_and_a_readable_one_is_named_with_its_mode() {
        let (_d, private) = file(0o600);
        assert_eq!(check(&private, Mode::Stable), Ok(()));
        let (_d, readonly) = file(0o400);
        assert_eq!(check(&readonly, Mode::Rc), Ok(()));
        let (_d, open) = file(0o644);
        let why = check(&open, Mode::Rc).expect_err("refused");
        assert!(why.contains("secret") && why.contains("0644"), "{why}");
        // The service's own file may not let its group read (root's may: a Kubernetes Secret).
        let (_d, group) = file(0o640);
        assert!(check(&group, Mode::Stable).is_err());
        assert_eq!(check(&open, Mode::Dev), Ok(()), "dev takes anything");
    }
}
